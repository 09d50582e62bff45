"""eldric.web.auth: the one bearer check (scheme case-insensitive, constant-time compare)."""

from __future__ import annotations

import pytest

from eldric.web.auth import bearer_token, has_token


@pytest.mark.parametrize("header, token", [("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER abc", "abc"),
                                           ("Basic abc", None), ("Bearer", None), ("", None), (None, None),
                                           ("Bearerabc", None)])
def test_bearer_token(header, token) -> None:
    assert bearer_token(header) == token


def test_has_token() -> None:
    assert has_token("bearer s3cret", "s3cret")
    assert not has_token("Bearer s3cre", "s3cret")
    assert not has_token(None, "s3cret")


def test_every_service_hook_takes_the_scheme_in_any_case() -> None:
    """require_bearer is the one hook of the controller, the registry and the agent."""
    from flask import Flask

    from eldric.web.auth import require_bearer

    app = Flask("t")
    app.get("/x")(lambda: "ok")
    require_bearer(app, lambda: "s3cret", is_open=lambda path: False, refuse=lambda path: ("no", 401))
    c = app.test_client()
    assert [c.get("/x", headers={"Authorization": f"{s} s3cret"}).status_code
            for s in ("Bearer", "bearer", "BEARER", "bEaReR")] == [200] * 4
    assert c.get("/x", headers={"Authorization": "bearer nope"}).status_code == 401


class FakeSocket:
    def __init__(self) -> None:
        self.sent = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.sent += data


def test_gunicorns_own_errors_come_in_our_json_format() -> None:
    """414 (request line over the bound) and the like are written by gunicorn before the app runs."""
    import json

    from eldric.web.gunicorn_server import write_json_error

    sock = FakeSocket()
    write_json_error(sock, 414, "URI Too Long", "Request Line is too large (9041 > 8190)")
    head, _, body = sock.sent.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 URI Too Long\r\n") and b"Content-Type: application/json" in head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    assert json.loads(body) == {"code": 414, "status": "Request-URI Too Long",
                                "message": "Request Line is too large (9041 > 8190)"}
