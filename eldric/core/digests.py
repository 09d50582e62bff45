"""sha256 digests: one value type, validated before any path is built from it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO

from eldric.core.errors import InvalidDigestError

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Digest:
    hex: str

    @classmethod
    def parse(cls, raw: str) -> Digest:
        """Accept `sha256:<hex>` (and Ollama's file form `sha256-<hex>`)."""
        if isinstance(raw, str) and raw.startswith("sha256-"):
            raw = "sha256:" + raw[len("sha256-"):]
        if not isinstance(raw, str) or not _DIGEST.fullmatch(raw):
            raise InvalidDigestError(f"invalid digest {raw!r}: expected sha256:<64 lowercase hex digits>")
        return cls(hex=raw[len("sha256:"):])

    @classmethod
    def of_bytes(cls, data: bytes) -> Digest:
        return cls(hex=hashlib.sha256(data).hexdigest())

    @property
    def filename(self) -> str:
        """Ollama's blob file name: `sha256-<hex>` (no ':' so it works on every filesystem)."""
        return f"sha256-{self.hex}"

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


def is_digest(raw: str) -> bool:
    return isinstance(raw, str) and bool(_DIGEST.fullmatch(raw))


def sha256_of_file(f: BinaryIO, limit: int | None = None) -> hashlib._Hash:
    """Hash a file object from its current position (up to `limit` bytes)."""
    h = hashlib.sha256()
    remaining = limit
    while remaining is None or remaining > 0:
        chunk = f.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
        if not chunk:
            break
        h.update(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return h
