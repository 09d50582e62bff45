"""`eldric controller`: run the controller with werkzeug's threaded server (gunicorn in production)."""

from __future__ import annotations

import argparse
import os

HELP = "run the controller (REST API, dashboard)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=os.environ.get("ELDRIC_CONTROLLER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("ELDRIC_CONTROLLER_PORT", "8880")))


def run(args: argparse.Namespace) -> int:
    from werkzeug.serving import run_simple

    from controller import create_app
    from eldric import logging_setup

    logging_setup.configure_logging(os.environ.get("ELDRIC_LOG_LEVEL", "INFO"), logging_setup.format_from_env())
    run_simple(args.host, args.port, create_app(), threaded=True, use_reloader=False)
    return 0
