"""Small filesystems for disk-full tests: a tmpfs of a few MiB mounted on a directory (needs root)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class MountError(RuntimeError):
    """The tmpfs could not be mounted (not root, no CAP_SYS_ADMIN); tests skip on it."""


@contextmanager
def small_tmpfs(directory: Path, size: str = "64m") -> Iterator[Path]:
    """Mount a tmpfs of `size` on `directory` (created), unmounted (lazily) on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True,
                       capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MountError(f"cannot mount a {size} tmpfs on {directory} (needs root or CAP_SYS_ADMIN): "
                         f"{getattr(exc, 'stderr', '') or exc}") from None
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True, timeout=10)
