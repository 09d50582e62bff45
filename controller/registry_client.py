"""How the controller reaches the data worker's model registry (config REGISTRY_URL), over the one API
client (eldric/transfer/model_registry.py).

The controller mirrors the registry API path for path and streams bodies both
ways: an upload is read from the client's socket and written to the registry's in
1 MiB blocks, a download the other way round, so neither direction holds more
than a block in memory whatever the file size. Error answers of the registry are
passed through unchanged (they already are in the one problem format).
"""

from __future__ import annotations

from typing import BinaryIO
from collections.abc import Iterator

import requests
from flask import Response

from eldric.core.redaction import redact_url, redact_urls
from eldric.core.request_errors import UnavailableError
from eldric.transfer.model_registry import ModelRegistryApi

BLOCK = 1 << 20
REQUEST_HEADERS = ("Content-Type", "Content-Range", "Upload-Offset", "Range", "If-Range", "If-None-Match", "Accept")
RESPONSE_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "ETag", "Location",
                    "Upload-Offset", "Range", "Docker-Upload-UUID", "X-Content-Digest", "Content-Disposition")


class _StreamBody:
    """The client's body as requests wants it to send with a Content-Length: len() and read()."""

    def __init__(self, stream: BinaryIO, length: int) -> None:
        self.stream, self.length = stream, length

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n if n and n > 0 else BLOCK)


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    """A body of unknown length (chunked transfer encoding): forwarded chunked too."""
    while True:
        block = stream.read(BLOCK)
        if not block:
            return
        yield block


class RegistryClient:
    def __init__(self, base_url: str, token: str = "", session: requests.Session | None = None,
                 timeout: tuple[float, float] = (5, 600)) -> None:
        # The cluster secret as the bearer; a client's own Authorization is the controller's business, never sent on.
        self.api = ModelRegistryApi(base_url, token, session, timeout)
        self.base_url = self.api.base_url

    def send(self, method: str, path: str, *, query: bytes | str = b"", headers: dict[str, str] | None = None,
             body: bytes | BinaryIO | None = None, length: int | None = None,
             json: dict | None = None) -> requests.Response:
        """One call to the registry, its answer streamed; 503 when the registry cannot be reached."""
        if query:
            path += "?" + (query.decode() if isinstance(query, bytes) else query)
        sent = {k: v for k, v in (headers or {}).items() if k in REQUEST_HEADERS}
        data: object = body
        if body is not None and not isinstance(body, bytes):
            data = _StreamBody(body, length) if length is not None else _chunks(body)
        try:
            return self.api.request(method, path, headers=sent, data=data, json=json, stream=True, allow_redirects=False)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise UnavailableError(f"model registry unreachable at {redact_url(self.base_url)}: {redact_urls(str(exc))}") from None


def to_flask(resp: requests.Response) -> Response:
    """The registry's answer as the controller's, body streamed block by block as it arrives."""
    headers = {k: resp.headers[k] for k in RESPONSE_HEADERS if k in resp.headers}

    def body() -> Iterator[bytes]:
        try:
            yield from resp.raw.stream(BLOCK, decode_content=False)
        finally:
            resp.close()

    out = Response(body(), status=resp.status_code, headers=headers, direct_passthrough=True)
    out.call_on_close(resp.close)
    return out


def error_message(resp: requests.Response) -> str:
    """The message of a registry error answer (problem format), for job records."""
    try:
        return str(resp.json().get("message") or resp.reason)
    except ValueError:
        return f"HTTP {resp.status_code} {resp.reason}"
