"""Free disk space: the check before a download, and the error when a disk fills during one.

Both say the same thing in the same words, `no space left on <device> (<mount point>):
needs X, has Y`, so a full disk reads as an ordinary failure, not an internal error.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from eldric.transfer.errors import InsufficientSpaceError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def format_size(n: int) -> str:
    """`512 B`, `40.0 MiB`, `1.50 GiB` (binary units)."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(n) >= 1 << shift:
            return f"{n / (1 << shift):.{2 if shift >= 30 else 1}f} {unit}"
    return f"{n} B"


def mount_of(path: Path) -> tuple[str, str]:
    """(device, mount point) of the filesystem holding `path`, from /proc/self/mounts; (`?`, path) elsewhere."""
    target = os.path.realpath(path)
    best = ("?", str(path))
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return best
    longest = -1
    for line in lines:
        fields = line.split()
        if len(fields) < 2:
            continue
        device, mount = fields[0], fields[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > longest:
            best, longest = (device, mount), len(mount)
    return best


def where(directory: Path) -> str:
    device, mount = mount_of(directory)
    return f"{device} ({mount})"


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def no_space_error(directory: Path, needed: int | None, what: str = "") -> InsufficientSpaceError:
    """The error for a disk that filled while writing to `directory`: the task `needed` bytes (None: unknown), what is free."""
    try:
        free = free_bytes(directory)
    except OSError:
        free = 0
    needs = "more" if needed is None else format_size(needed)
    return InsufficientSpaceError(f"no space left on {where(directory)}{f' for {what}' if what else ''}: "
                                  f"needs {needs}, has {format_size(free)}")


def ensure_space(directory: Path, needed: int, what: str, reserve: int = 1 << 30) -> None:
    """Refuse early (InsufficientSpaceError) when `needed` bytes plus a reserve do not fit on the disk.

    `needed` counts only the bytes still missing: a partial download already on this disk counts as written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    free = free_bytes(directory)
    if needed + reserve > free:
        extra = f" + {format_size(reserve)} reserve" if reserve else ""
        raise InsufficientSpaceError(f"no space left on {where(directory)} for {what}: needs "
                                     f"{format_size(needed)}{extra}, has {format_size(free)}")
