"""The operator dashboard: /dashboard (Models tab), plain HTML, CSS and modest JavaScript over the /api/v1 API.

The page carries no data of its own: every panel calls the REST API from the
browser (with the bearer token the operator stored in the page, when the API
needs one), so the dashboard route itself needs no token and no Redis.
"""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, url_for

from eldric import __version__

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard/static")


@bp.get("/dashboard")
def models_tab():
    return render_template("dashboard.html", version=__version__, tab="models")


@bp.get("/dashboard/")
def models_tab_slash():
    return redirect(url_for("dashboard.models_tab"))
