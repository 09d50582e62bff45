"""Content-addressed files: one file per sha256, named `sha256-<hex>`.

Writers go through a uniquely named temp file in the same directory, hash while
writing, check the digest, then `os.replace` — so a half-written or corrupt blob
is never visible under its final name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO
from collections.abc import Iterable

from eldric.core.digests import Digest
from eldric.core.errors import DigestMismatchError

_CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, digest: Digest) -> Path:
        return self.root / digest.filename

    def has(self, digest: Digest, size: int | None = None) -> bool:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def size(self, digest: Digest) -> int:
        return self.path(digest).stat().st_size

    def digests(self) -> Iterable[Digest]:
        if not self.root.is_dir():
            return
        for entry in os.scandir(self.root):
            if entry.is_file() and entry.name.startswith("sha256-") and len(entry.name) == 71:
                try:
                    yield Digest.parse(entry.name)
                except ValueError:
                    continue

    def temp_file(self, suffix: str = ".tmp") -> tuple[BinaryIO, Path]:
        """A new uniquely named file in the store's directory (same filesystem as blobs)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".incoming-", suffix=suffix, dir=self.root)
        return os.fdopen(fd, "wb"), Path(name)

    def put_stream(self, chunks: Iterable[bytes], expected: Digest | None = None) -> tuple[Digest, int]:
        """Store the bytes of `chunks`; verify against `expected` when given."""
        f, tmp = self.temp_file()
        h = hashlib.sha256()
        size = 0
        try:
            with f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            actual = Digest(h.hexdigest())
            if expected is not None and actual != expected:
                raise DigestMismatchError(f"digest mismatch: expected {expected}, got {actual}")
            self.commit(tmp, actual)
            return actual, size
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        return self.put_stream([data], expected)[0]

    def commit(self, verified_file: Path, digest: Digest) -> Path:
        """Move an already verified file into place under its digest name."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(verified_file, 0o644)
        os.replace(verified_file, final)
        return final

    def delete(self, digest: Digest) -> bool:
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False
