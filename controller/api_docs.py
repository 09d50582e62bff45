"""Swagger UI's files served by the controller itself, so the API docs page works on air-gapped sites.

The files come from the `swagger-ui-bundle` package (a packaged copy of swagger-ui-dist);
flask-smorest's docs page loads them from OPENAPI_SWAGGER_UI_URL, which points here.
The path is outside /api/, so, like the docs page, it needs no token.
"""

from __future__ import annotations

from flask import Blueprint, send_from_directory
from swagger_ui_bundle import swagger_ui_path

URL = "/docs/swagger-ui/"

bp = Blueprint("swagger_ui", __name__)


@bp.get(f"{URL}<path:filename>")
def asset(filename: str):
    return send_from_directory(swagger_ui_path, filename, max_age=24 * 3600)
