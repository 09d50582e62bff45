"""The one bearer-token check every HTTP service of ours uses (controller, registry, agent)."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from flask import Flask, Response, request

# Authorization := scheme 1*SP credentials; the scheme is case-insensitive (RFC 9110 §11.1).
_SCHEME = "bearer"


def bearer_token(header: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer <token>` header (any case of the scheme), or None."""
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != _SCHEME:
        return None
    return credentials.strip() or None


def has_token(header: str | None, expected: str) -> bool:
    """Whether the header carries `expected`, compared in constant time."""
    sent = bearer_token(header)
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


def require_bearer(app: Flask, token: Callable[[], str], *, is_open: Callable[[str], bool],
                   refuse: Callable[[str], Response | tuple]) -> None:
    """Before every request: when `token()` is set, a path that is not open needs it; else `refuse(path)`."""
    @app.before_request
    def check_bearer_token():
        expected = token()
        if not expected or is_open(request.path) or has_token(request.headers.get("Authorization"), expected):
            return None
        return refuse(request.path)
