"""The controller's REST API as the `eldric` operator commands use it (bearer token, JSON errors, SSE)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from urllib.parse import quote

import requests

from eldric.core.errors import EldricError
from eldric.core.redaction import redact_url
from eldric.transfer.http import bearer, http_session

DEFAULT_CONTROLLER = "http://127.0.0.1:8880"


class ClientError(EldricError):
    """A failure to report in one line (exit status 1); `status` is the HTTP status, if there was an answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Api:
    """The controller's REST API: JSON in and out, its error format turned into ClientError."""

    def __init__(self, base_url: str, token: str = "", session: requests.Session | None = None,
                 timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.session = session or http_session()
        self.session.headers.update(bearer(token))
        self.timeout = timeout

    def call(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        try:
            resp = self.session.request(method, self.base + path, **kw)
        except requests.ConnectionError as exc:
            raise ClientError(f"cannot reach the controller at {redact_url(self.base)} ({type(exc).__name__})") from None
        if resp.status_code >= 400:
            raise ClientError(f"{method} {path}: HTTP {resp.status_code}: {error_message(resp)}", resp.status_code)
        return resp

    def get(self, path: str, **params) -> dict:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: dict) -> dict:
        return self.call("POST", path, json=body).json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        with self.call("GET", f"/api/v1/models/pull-jobs/{quote(job_id, safe='')}/events", stream=True, timeout=(10, 60),
                       headers={"Accept": "text/event-stream"}) as resp:
            yield from parse_sse(resp.iter_lines(decode_unicode=True))


def error_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason
    if isinstance(body, dict):
        if body.get("message"):
            return str(body["message"])
        fields = [f"{k}: {' '.join(map(str, v))}" for where in (body.get("errors") or {}).values()
                  for k, v in (where or {}).items()]
        if fields:
            return "; ".join(fields)
    return json.dumps(body)[:300]


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) for each event of a text/event-stream; comments and `retry:` are skipped."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
