"""Range and Content-Range parsing (RFC 9110 §14): one range; anything unservable is a 416."""

from __future__ import annotations

import pytest

from eldric.core.request_errors import RangeNotSatisfiableError
from eldric.transfer.ranges import ByteRange, parse_content_range, parse_range


@pytest.mark.parametrize("header, size, expected", [
    (None, 100, None),
    ("", 100, None),
    ("bytes=0-9", 100, ByteRange(0, 9)),
    ("bytes=10-", 100, ByteRange(10, 99)),
    ("bytes=-10", 100, ByteRange(90, 99)),
    ("bytes=-1000", 100, ByteRange(0, 99)),  # a suffix longer than the file is the whole file
    ("bytes=90-1000", 100, ByteRange(90, 99)),  # last beyond the end is clamped
    ("bytes=99-99", 100, ByteRange(99, 99)),
    ("BYTES = 5 - 6", 100, ByteRange(5, 6)),
])
def test_satisfiable_ranges(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header, size", [
    ("bytes=100-", 100),  # starts past the end
    ("bytes=5-4", 100),  # ends before it starts
    ("bytes=-0", 100),  # empty suffix
    ("bytes=0-", 0),  # nothing in an empty file
    ("bytes=0-1,5-6", 100),  # several ranges
    ("items=0-1", 100),  # another unit
    ("bytes=abc", 100),
    ("bytes=-", 100),
])
def test_unsatisfiable_ranges_carry_the_size(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError) as err:
        parse_range(header, size)
    assert err.value.status == 416 and err.value.size == size


def test_byte_range_helpers() -> None:
    r = ByteRange(10, 19)
    assert r.length == 10 and r.content_range(100) == "bytes 10-19/100"


@pytest.mark.parametrize("header, expected", [
    ("bytes 0-1023/4096", (0, 1023, 4096)),
    ("bytes 1024-2047/*", (1024, 2047, None)),
    ("0-1023", (0, 1023, None)),  # OCI distribution's form
])
def test_content_range_of_upload_chunks(header: str, expected: tuple) -> None:
    assert parse_content_range(header) == expected


@pytest.mark.parametrize("header", ["", "bytes 5-4/10", "bytes a-b/*", "bytes=0-1"])
def test_bad_content_range(header: str) -> None:
    with pytest.raises(ValueError):
        parse_content_range(header)
