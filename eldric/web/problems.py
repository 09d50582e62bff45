"""The one HTTP error format every Eldric service answers with.

flask-smorest's shape: `{"code": 422, "status": "Unprocessable Entity",
"message": "...", "errors": {...}}`. Every error is JSON — including 404/405 from
routing and unexpected exceptions, whose traceback goes to the log only.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def error_body(code: int, message: str | None = None, errors: dict | None = None) -> dict:
    body: dict = {"code": code, "status": HTTPStatus(code).phrase}
    if message:
        body["message"] = message
    if errors:
        body["errors"] = errors
    return body


def error_response(code: int, message: str | None = None, errors: dict | None = None):
    return jsonify(error_body(code, message, errors)), code


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        data = getattr(exc, "data", None) or {}
        message = data.get("message") or exc.description
        errors = data.get("messages") or data.get("errors")
        resp = error_response(exc.code or 500, message, errors)
        if exc.code == 405 and exc.get_response().headers.get("Allow"):
            resp[0].headers["Allow"] = exc.get_response().headers["Allow"]
        return resp

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error; see the service log")
