"""The operator dashboard: /dashboard (Models tab), plain HTML, CSS and modest JavaScript over the /api/v1 API.

The page carries no data of its own: every panel calls the REST API from the
browser (with the bearer token the operator stored in the page, when the API
needs one), so the dashboard route itself needs no token and no Redis.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, redirect, render_template, send_from_directory, url_for

from eldric import __version__

STATIC = Path(__file__).parent / "static"

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard/static")


@bp.get("/dashboard")
def models_tab():
    return render_template("dashboard.html", version=__version__, tab="models")


@bp.get("/dashboard/")
def models_tab_slash():
    return redirect(url_for("dashboard.models_tab"))


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico on every page (the API docs too): answer with the SVG icon."""
    return send_from_directory(STATIC, "favicon.svg", mimetype="image/svg+xml", max_age=86400)
