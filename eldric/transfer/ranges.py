"""HTTP byte ranges (RFC 9110 §14) for file downloads: one range per request.

Grammar accepted::

    Range := "bytes=" ( first "-" [last] | "-" suffix_length )

`last` beyond the end is clamped to the last byte. Anything else — multiple
ranges, other units, first > last, a range starting past the end, any range of an
empty file — raises RangeNotSatisfiableError (416). Being strict costs a client
nothing and saves sending 20 GiB to one that asked for something else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eldric.core.request_errors import RangeNotSatisfiableError

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range of a `size`-byte file that `header` asks for; None means the whole file."""
    if header is None or not header.strip():
        return None
    if "," in header:
        raise RangeNotSatisfiableError("multiple ranges are not supported; ask for one range", size)
    match = _RANGE.match(header)
    if not match:
        raise RangeNotSatisfiableError(f"malformed Range header {header!r}; expected bytes=first-[last] "
                                       "or bytes=-suffix", size)
    first, last = match.groups()
    if first == "" and last == "":
        raise RangeNotSatisfiableError(f"malformed Range header {header!r}", size)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiableError("empty suffix range", size)
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size:
        raise RangeNotSatisfiableError(f"range starts at {start}, past the end of the {size}-byte file", size)
    if last != "" and int(last) < start:
        raise RangeNotSatisfiableError(f"range {header!r} ends before it starts", size)
    return ByteRange(start, end)


_CONTENT_RANGE = re.compile(r"^\s*(?:bytes\s+)?(\d+)-(\d+)(?:/(\d+|\*))?\s*$", re.IGNORECASE)


def parse_content_range(header: str) -> tuple[int, int, int | None]:
    """(first, last inclusive, total or None) of an upload chunk's `Content-Range`.

    Accepts RFC form `bytes 0-1023/4096` and `bytes 0-1023/*`, and the OCI
    distribution form `0-1023`.
    """
    match = _CONTENT_RANGE.match(header or "")
    if not match:
        raise ValueError(f"malformed Content-Range {header!r}; expected 'bytes first-last/total' or 'first-last'")
    first, last, total = match.groups()
    if int(last) < int(first):
        raise ValueError(f"Content-Range {header!r} ends before it starts")
    return int(first), int(last), (int(total) if total and total != "*" else None)
