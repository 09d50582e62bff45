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
    server = _server_class()(settings.controller_host, settings.controller_port, create_app())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _server_class():
    from werkzeug.serving import ThreadedWSGIServer

    class Server(ThreadedWSGIServer):
        # werkzeug listens with a backlog of 128: hundreds of dashboards and CLIs opening their job
        # streams at once would be refused (connection reset) before a thread could accept them.
        request_queue_size = 1024
    return Server
