"""`eldric controller`: run the controller with werkzeug's threaded server (gunicorn in production)."""

from __future__ import annotations

import argparse
import logging
import sys

HELP = "run the controller (REST API, dashboard)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="listen address (default $ELDRIC_CONTROLLER_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default $ELDRIC_CONTROLLER_PORT or 8880)")


def run(args: argparse.Namespace) -> int:
    from werkzeug.serving import run_simple

    from controller import create_app
    from controller.config import ControllerSettings
    from eldric import logging_setup

    try:
        settings = ControllerSettings.from_env(controller_host=args.host, controller_port=args.port)
    except ValueError as exc:
        print(f"eldric controller: {exc}", file=sys.stderr)
        return 2
    logging_setup.configure_logging(settings.log_level, logging_setup.format_from_env())
    logging.getLogger("controller").info("effective configuration: %s", settings.effective())
    run_simple(settings.controller_host, settings.controller_port, create_app(), threaded=True, use_reloader=False)
    return 0
