"""CORS on the Ollama and OpenAI endpoints, for front-ends that call from the page (LobeChat, browser
extensions, ollama-js in a browser): `ELDRIC_CORS_ORIGINS` lists the page origins allowed (`*` for any,
explicitly); unset, no CORS header is sent and a browser keeps pages of other origins out, as before.

Covered: `/`, `/api/*` (Ollama's) except `/api/v1/*` (our own REST API and its dashboard stay same-origin) and
`/v1/*` (OpenAI's). flask-cors marks every answer, errors and streams included. A preflight (OPTIONS with
Origin and Access-Control-Request-Method) is answered here, before any bearer check (the app's, or a
blueprint's own for /v1): browsers send no credentials on it (Fetch standard, "CORS-preflight request") and it
runs no view. The call that follows still needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flask import Flask, request
from flask_cors import CORS

# Which paths get CORS headers: Ollama's root and /api/* but /api/v1, and OpenAI's /v1.
PATHS = re.compile(r"^(/|/api/(?!v1(/|$)).*|/v1(/.*)?)$")
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")  # scheme://host[:port], nothing after it


def checked_origins(origins: Sequence[str]) -> tuple[str, ...]:
    """The setting's origins, each `*` (alone) or `scheme://host[:port]`; ValueError naming the bad one."""
    for origin in origins:
        if origin != "*" and not ORIGIN.match(origin):
            raise ValueError(f"not a page origin: {origin!r} (write scheme://host[:port], e.g. "
                             "https://chat.example.org, no path or trailing slash; or * for any)")
    if "*" in origins and len(origins) > 1:
        raise ValueError("* allows every origin: list it alone, or list the origins without it")
    return tuple(origins)


def install(app: Flask, origins: Sequence[str]) -> None:
    """CORS for PATHS from `origins` (nothing when empty)."""
    if not origins:
        return
    allowed = "*" if "*" in origins else list(origins)
    # Authorization and Content-Type are what the clients send; credentials (cookies) are never needed.
    CORS(app, resources={PATHS: {"origins": allowed}}, allow_headers=["Authorization", "Content-Type"],
         methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"], max_age=600, supports_credentials=False,
         send_wildcard=allowed == "*", always_send=False)  # only answers to a page (an Origin header) are marked

    @app.before_request
    def answer_preflight():
        if is_preflight() and PATHS.match(request.path):
            return app.make_default_options_response()  # flask-cors adds its headers after
        return None


def is_preflight() -> bool:
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)
