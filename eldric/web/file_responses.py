"""Serving one stored file over HTTP with single-range support (RFC 9110 §14), in 1 MiB reads."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO
from collections.abc import Iterator

from flask import Request, Response

from eldric.transfer.ranges import parse_range

CHUNK = 1 << 20


def file_response(request: Request, path: Path, *, etag: str, filename: str | None = None) -> Response:
    """200 or 206 with Content-Range; 304 on a matching If-None-Match; `If-Range` honoured.

    Raises FileNotFoundError if the file is gone and RangeNotSatisfiableError on a bad Range.
    """
    f = open(path, "rb")
    size = path.stat().st_size
    quoted = f'"{etag}"'
    headers = {"ETag": quoted, "Accept-Ranges": "bytes"}
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    if quoted in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        f.close()
        return Response(status=304, headers=headers)
    if_range = request.headers.get("If-Range")
    wanted = parse_range(request.headers.get("Range") if if_range in (None, quoted) else None, size)
    start, length, status = (wanted.start, wanted.length, 206) if wanted else (0, size, 200)
    if wanted:
        headers["Content-Range"] = wanted.content_range(size)
    resp = Response(read_span(f, start, length), status=status, headers=headers,
                    mimetype="application/octet-stream", direct_passthrough=True)
    resp.content_length = length
    resp.call_on_close(f.close)
    return resp


def read_span(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    f.seek(start)
    while length > 0:
        chunk = f.read(min(CHUNK, length))
        if not chunk:
            return  # the file shrank under us; the client sees a short body and retries
        length -= len(chunk)
        yield chunk
