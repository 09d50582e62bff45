"""Reading a ranged HTTP body into our buffers and files, for the download engine (eldric/transfer/download.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

import requests


def direct_reader(resp: requests.Response) -> Callable[[memoryview], int]:
    """A readinto() for the body: straight from the socket into our buffer when nothing needs decoding.

    urllib3's read() allocates and copies every chunk; http.client's readinto() fills a
    reused buffer, which saves a full copy of every blob (measured ~15% of a 1 GiB pull).
    """
    fp = getattr(resp.raw, "_fp", None)
    if fp is not None and hasattr(fp, "readinto") and not resp.headers.get("Content-Encoding"):
        return fp.readinto

    def read_decoded(buf: memoryview) -> int:
        chunk = resp.raw.read(len(buf), decode_content=True)
        buf[: len(chunk)] = chunk
        return len(chunk)
    return read_decoded


def read_past(readinto: Callable[[memoryview], int], buf: memoryview, count: int) -> bool:
    """Read and drop `count` bytes of the body; False if it ended first."""
    while count > 0:
        n = readinto(buf[: min(len(buf), count)])
        if not n:
            return False
        count -= n
    return True


def reuse_connection(resp: requests.Response) -> None:
    """Hand a fully read connection back to the pool: reading past urllib3 means it cannot tell.

    A new TCP connection per range costs more than the range's transfer on fast
    links (measured: 33 ranges of 32 MiB on loopback took 30% longer than one GET).
    """
    fp = getattr(resp.raw, "_fp", None)
    if fp is not None and getattr(fp, "isclosed", lambda: False)() and hasattr(resp.raw, "release_conn"):
        resp.raw.release_conn()


def pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    while view:
        written = os.pwrite(fd, view, pos)
        view, pos = view[written:], pos + written
