"""Serving one stored file over HTTP: flask.send_file with werkzeug's conditional responses.

Range (one range), If-Range, If-None-Match and If-Modified-Since are werkzeug's. A
whole file goes out as `wsgi.file_wrapper`, which gunicorn turns into `sendfile(2)`.
werkzeug serves a range through a wrapper that reads 8 KiB at a time in Python, so
for a 206 we hand the server its own file wrapper over the file positioned at the
range's start: gunicorn sends `Content-Length` bytes from there with `sendfile(2)`.
Servers without a file wrapper (werkzeug's, the test client) get 1 MiB reads.

Our own range parser runs first, so ranges we refuse (several ranges, other units,
a start past the end) answer 416 before the file is even opened.

With a `limiter` (a capped eldric.transfer.ratelimit bucket: the agent's
ELDRIC_MAX_PEER_UPLOAD_RATE) the body is read in 1 MiB chunks, each taken from the
bucket before it goes out: no sendfile, but the cap holds across all threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from flask import Request, Response, send_file

from eldric.transfer.ranges import parse_range
from eldric.transfer.ratelimit import NoLimit, TokenBucket

CHUNK = 1 << 20


def file_response(request: Request, path: Path, *, etag: str, filename: str | None = None,
                  limiter: TokenBucket | NoLimit | None = None) -> Response:
    """200 or 206 with Content-Range; 304 on a matching If-None-Match; `If-Range` honoured.

    Raises FileNotFoundError if the file is gone and RangeNotSatisfiableError on a bad Range.
    """
    size = path.stat().st_size
    wanted = None
    if request.headers.get("If-Range") in (None, f'"{etag}"'):
        wanted = parse_range(request.headers.get("Range"), size)  # refuse what we do not serve, before opening
    resp = send_file(path, mimetype="application/octet-stream", as_attachment=bool(filename), download_name=filename,
                     conditional=True, etag=etag, max_age=None)
    resp.headers["Accept-Ranges"] = "bytes"
    capped = limiter is not None and not isinstance(limiter, NoLimit)
    if resp.status_code in (200, 206) and (capped or (resp.status_code == 206 and wanted is not None)):
        start, length = (wanted.start, wanted.length) if resp.status_code == 206 and wanted else (0, size)
        resp.response.close()  # werkzeug's 8 KiB range reader over its own handle
        f = open(path, "rb")  # noqa: SIM115  (closed by the response, or by the server's file wrapper)
        if capped:
            f.seek(start)
            resp.response = _paced(read_span(f, length), limiter)
        else:
            resp.response = _span(request.environ, f, start, length)
        resp.direct_passthrough = True
        resp.call_on_close(f.close)
    return resp


def _paced(chunks: Iterable[bytes], limiter: TokenBucket) -> Iterator[bytes]:
    for chunk in chunks:
        limiter.take(len(chunk))
        yield chunk


def _span(environ: dict, f: BinaryIO, start: int, length: int) -> Iterable[bytes]:
    f.seek(start)
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:  # the server's own (gunicorn: sendfile from the current offset, Content-Length bytes)
        return wrapper(f, CHUNK)
    return read_span(f, length)


def read_span(f: BinaryIO, length: int) -> Iterator[bytes]:
    while length > 0:
        chunk = f.read(min(CHUNK, length))
        if not chunk:
            return  # the file shrank under us; the client sees a short body and retries
        length -= len(chunk)
        yield chunk
