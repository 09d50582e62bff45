"""A lean GGUF header reader: scalar metadata and tensor sizes, in bounded memory.

Why not `gguf.GGUFReader`: it materialises every array value as numpy objects, so
a 128k-token vocabulary costs ~310 MB of RSS and 4 s (measured here) — and a
registry hosting 20 GiB uploads must stay in constant memory. This walker streams
the header with the `gguf` package's own value types, quantization block sizes
and alignment, keeps scalar values, and skips arrays without reading them into
memory. tests/unit/test_registry_formats.py checks it agrees with GGUFReader.

Layout (GGUF v2/v3, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md)::

    magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count   x (string key | u32 value_type | value)
    tensor_count x (string name | u32 n_dims | n_dims x u64 | u32 ggml_type | u64 offset)
    padding to general.alignment (default 32) | tensor data
    string := u64 length | bytes;  array := u32 element_type | u64 count | elements
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUFValueType

from eldric.core.errors import EldricError

SUPPORTED_VERSIONS = (2, 3)
MAX_KEY = 1 << 16
MAX_KEPT_STRING = 1 << 20  # longer scalar strings are skipped, not kept
MAX_STRING = 1 << 30
MAX_COUNT = 1 << 32
MAX_DIMS = 4
_SCALARS = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
            GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
            GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
            GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}


class GGUFHeaderError(EldricError, ValueError):
    """The bytes are not a well-formed GGUF header."""


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, object] = field(default_factory=dict)  # scalar values only
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensor_count: int = 0
    parameter_count: int = 0
    data_offset: int = 0
    data_end: int = 0  # where the last tensor's bytes end, from the file's start


class _Reader:
    def __init__(self, f: BinaryIO, order: str) -> None:
        self.f, self.order = f, order

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        raw = self.f.read(size)
        if len(raw) != size:
            raise GGUFHeaderError("file ends inside the GGUF header (truncated)")
        return struct.unpack(self.order + fmt, raw)[0]

    def string(self, keep_up_to: int) -> str | None:
        n = self.unpack("Q")
        if n > MAX_STRING:
            raise GGUFHeaderError(f"implausible string length {n}")
        if n > keep_up_to:
            self.f.seek(n, 1)
            return None
        raw = self.f.read(n)
        if len(raw) != n:
            raise GGUFHeaderError("file ends inside the GGUF header (truncated)")
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> object:
        if vtype == GGUFValueType.STRING:
            return self.string(MAX_KEPT_STRING)
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        raise GGUFHeaderError(f"unknown GGUF value type {vtype}")

    def skip_array(self) -> int:
        etype, count = self.unpack("I"), self.unpack("Q")
        if count > MAX_COUNT:
            raise GGUFHeaderError(f"implausible array length {count}")
        if etype == GGUFValueType.STRING:
            for _ in range(count):
                self.string(-1)
        elif etype == GGUFValueType.ARRAY:
            for _ in range(count):
                self.skip_array()
        elif etype in _SCALARS:
            self.f.seek(count * struct.calcsize(_SCALARS[etype]), 1)
        else:
            raise GGUFHeaderError(f"unknown GGUF array element type {etype}")
        return count


def read_header(path: Path) -> GGUFHeader:
    """Parse the header of the GGUF file at `path`; raise GGUFHeaderError if it is malformed."""
    with open(path, "rb", buffering=1 << 20) as f:
        if f.read(4) != b"GGUF":
            raise GGUFHeaderError("GGUF magic missing")
        raw_version = f.read(4)
        if len(raw_version) != 4:
            raise GGUFHeaderError("file ends inside the GGUF header (truncated)")
        order = "<" if struct.unpack("<I", raw_version)[0] & 0xFFFF else ">"  # big-endian files exist
        header = GGUFHeader(version=struct.unpack(order + "I", raw_version)[0])
        if header.version not in SUPPORTED_VERSIONS:
            raise GGUFHeaderError(f"GGUF version {header.version} is not supported (2 and 3 are)")
        r = _Reader(f, order)
        header.tensor_count, kv_count = r.unpack("Q"), r.unpack("Q")
        if header.tensor_count > MAX_COUNT or kv_count > MAX_COUNT:
            raise GGUFHeaderError("implausible tensor or key count")
        _read_metadata(r, header, kv_count)
        _read_tensors(r, header, f)
    return header


def _read_metadata(r: _Reader, header: GGUFHeader, kv_count: int) -> None:
    for _ in range(kv_count):
        key = r.string(MAX_KEY)
        if key is None:
            raise GGUFHeaderError("metadata key longer than 64 KiB")
        vtype = r.unpack("I")
        if vtype == GGUFValueType.ARRAY:
            header.array_lengths[key] = r.skip_array()
        else:
            header.metadata[key] = r.value(vtype)


def _read_tensors(r: _Reader, header: GGUFHeader, f: BinaryIO) -> None:
    end = 0
    for _ in range(header.tensor_count):
        if r.string(MAX_KEY) is None:
            raise GGUFHeaderError("tensor name longer than 64 KiB")
        n_dims = r.unpack("I")
        if n_dims > MAX_DIMS:
            raise GGUFHeaderError(f"tensor with {n_dims} dimensions (at most {MAX_DIMS})")
        elements = 1
        for _ in range(n_dims):
            elements *= r.unpack("Q")
        ggml_type, offset = r.unpack("I"), r.unpack("Q")
        try:
            block, type_size = GGML_QUANT_SIZES[ggml_type]
        except (KeyError, ValueError):
            raise GGUFHeaderError(f"unknown tensor type {ggml_type}") from None
        header.parameter_count += elements
        end = max(end, offset + elements // block * type_size)
    alignment = header.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFHeaderError(f"invalid general.alignment {alignment!r}")
    pos = f.tell()
    header.data_offset = pos + (-pos % alignment)
    header.data_end = header.data_offset + end
