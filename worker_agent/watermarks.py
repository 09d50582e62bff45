"""ELDRIC_DISK_HIGH_WATERMARK / ELDRIC_DISK_LOW_WATERMARK: how full the store's filesystem may get.

A watermark is a share of the filesystem (`90%`) or the bytes used (`40G`, K/M/G/T binary units as
every size setting). Above the high one the agent evicts least-recently-used models until the disk
is under the low one (worker_agent/eviction.py). Both are off by default: nothing is ever evicted
unless the operator says how full is too full. A low watermark left unset is the high one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eldric.core.settings import parse_size

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Watermark:
    """`percent` of the filesystem's total, or `used_bytes` used; `text` as the operator wrote it."""

    text: str
    percent: float | None = None
    used_bytes: int | None = None

    @classmethod
    def parse(cls, raw: str) -> Watermark | None:
        """None for "" or "off"; ValueError naming the accepted forms for anything else unreadable."""
        text = (raw or "").strip()
        if text.lower() in ("", "off", "none"):
            return None
        match = _PERCENT.match(text)
        if match:
            percent = float(match.group(1))
            if not 0 < percent <= 100:
                raise ValueError(f"a watermark in percent must be over 0 and at most 100, got {text!r}")
            return cls(text, percent=percent)
        try:
            used = parse_size(text)
        except ValueError:
            raise ValueError(f"not a watermark: {text!r} (a share of the disk like 90%, "
                             "or bytes used like 40G; empty or off: no eviction)") from None
        if used <= 0:
            raise ValueError(f"a watermark in bytes must be over 0, got {text!r}")
        return cls(text, used_bytes=used)

    def bytes_of(self, total: int) -> int:
        """The bytes used this watermark stands for on a filesystem of `total` bytes."""
        if self.percent is not None:
            return int(total * self.percent / 100)
        return min(int(self.used_bytes or 0), total)


@dataclass(frozen=True)
class Watermarks:
    high: Watermark | None
    low: Watermark | None

    @classmethod
    def parse(cls, high: str, low: str) -> Watermarks:
        """ValueError when low is set without high, or is above high when both are of one kind."""
        hi, lo = Watermark.parse(high), Watermark.parse(low)
        if hi is None and lo is not None:
            raise ValueError("ELDRIC_DISK_LOW_WATERMARK is set without ELDRIC_DISK_HIGH_WATERMARK")
        lo = lo or hi
        if hi and lo and hi.percent is not None and lo.percent is not None and lo.percent > hi.percent:
            raise ValueError(f"the low watermark {lo.text} is above the high one {hi.text}")
        if hi and lo and hi.used_bytes is not None and lo.used_bytes is not None and lo.used_bytes > hi.used_bytes:
            raise ValueError(f"the low watermark {lo.text} is above the high one {hi.text}")
        return cls(hi, lo)

    @property
    def enabled(self) -> bool:
        return self.high is not None

    def bounds(self, total: int) -> tuple[int, int] | None:
        """(high, low) in bytes used on a filesystem of `total` bytes; low never above high; None when off."""
        if self.high is None or self.low is None:
            return None
        high = self.high.bytes_of(total)
        return high, min(self.low.bytes_of(total), high)
