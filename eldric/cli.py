"""The `eldric` command: one entry point for every service (and, later, operator commands)."""

from __future__ import annotations

import argparse
import os
import sys

from eldric import __version__, client_cli
from eldric.queues import WORKER_TYPES


def _controller(args: argparse.Namespace) -> int:
    from werkzeug.serving import run_simple

    from controller import create_app
    from eldric import logging_setup

    logging_setup.configure_logging(os.environ.get("ELDRIC_LOG_LEVEL", "INFO"), logging_setup.format_from_env())
    app = create_app()
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from worker_agent.errors import SettingsError
    from worker_agent.main import run_agent
    from worker_agent.settings import AgentSettings

    try:
        settings = AgentSettings.from_env(worker_id=args.name, worker_type=args.type, port=args.port,
                                          data_dir=args.data_dir, host=args.host, concurrency=args.concurrency)
    except SettingsError as exc:
        print(f"eldric worker: {exc}", file=sys.stderr)
        return 2
    run_agent(settings, loglevel=args.loglevel)
    return 0


def _registry(args: argparse.Namespace) -> int:
    from registry.server import RegistrySettings, parse_size, serve

    env = os.environ
    storage = args.storage or env.get("ELDRIC_REGISTRY_STORAGE") or os.path.expanduser("~/.eldric/registry")
    try:
        settings = RegistrySettings(
            max_file_bytes=parse_size(args.max_file_size or env.get("ELDRIC_REGISTRY_MAX_FILE_SIZE") or "1T"),
            max_model_bytes=parse_size(args.max_model_size or env.get("ELDRIC_REGISTRY_MAX_MODEL_SIZE") or "4T"),
            min_free_bytes=parse_size(args.min_free or env.get("ELDRIC_REGISTRY_MIN_FREE") or "1G"),
            redis_url=args.redis_url or env.get("ELDRIC_REDIS_URL") or None,
            token=env.get("ELDRIC_CLUSTER_SECRET", ""),
            import_workers=args.import_workers,
        )
    except ValueError as exc:
        print(f"eldric registry: {exc}", file=sys.stderr)
        return 2
    serve(host=args.host, port=args.port, storage=storage, settings=settings)
    return 0


def _beat(args: argparse.Namespace) -> int:
    from celery import Celery

    from eldric import logging_setup
    from eldric.schedules import ScheduleSettings, beat_config

    try:
        schedule = ScheduleSettings.from_env()
        logging_setup.format_from_env()
    except ValueError as exc:
        print(f"eldric beat: {exc}", file=sys.stderr)
        return 2
    logging_setup.connect_celery_signals()
    app = Celery("eldric-beat")
    app.conf.update(beat_config(args.redis_url, schedule))
    # RedBeat keeps the schedule in Redis and takes a lock there: a second beat waits for it.
    app.Beat(loglevel=args.loglevel, max_interval=schedule.loop_seconds).run()
    return 0


def _flower(args: argparse.Namespace) -> int:
    """Replace this process with Flower watching our broker (task events are on, see eldric/celeryconf.py)."""
    extra = args.flower_args[1:] if args.flower_args[:1] == ["--"] else args.flower_args
    argv = [sys.executable, "-m", "celery", "flower", f"--port={args.port}", f"--address={args.host}", *extra]
    # Through the environment, not argv: a Redis password must not show in `ps`.
    os.execve(sys.executable, argv, {**os.environ, "CELERY_BROKER_URL": args.redis_url})
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eldric", description="Eldric Model Manager")
    parser.add_argument("--version", action="version", version=f"eldric {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("controller", help="run the controller (REST API, dashboard)")
    p.add_argument("--host", default=os.environ.get("ELDRIC_CONTROLLER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("ELDRIC_CONTROLLER_PORT", "8880")))
    p.set_defaults(func=_controller)

    p = sub.add_parser("worker", help="run a worker agent (Celery consumer + node HTTP agent)")
    p.add_argument("--type", required=True, choices=WORKER_TYPES)
    p.add_argument("--name", required=True, help="worker id, unique in the cluster")
    p.add_argument("--port", type=int, default=None, help="agent HTTP port (default: the type's port)")
    p.add_argument("--host", default=None, help="agent bind address (default 127.0.0.1)")
    p.add_argument("--data-dir", default=None, help="agent state directory (default ~/.eldric/NAME)")
    p.add_argument("--concurrency", type=int, default=None, help="tasks run at once")
    p.add_argument("--loglevel", default=os.environ.get("ELDRIC_LOG_LEVEL", "INFO"))
    p.set_defaults(func=_worker)

    p = sub.add_parser("registry", help="run the data worker's model registry")
    p.add_argument("--host", default=os.environ.get("ELDRIC_REGISTRY_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("ELDRIC_REGISTRY_PORT", "8892")))
    p.add_argument("--storage", default=None, help="storage root (default ~/.eldric/registry)")
    p.add_argument("--redis-url", default=None, help="Redis for import job progress (default $ELDRIC_REDIS_URL)")
    p.add_argument("--max-file-size", default=None, help="largest file accepted, e.g. 200G (default 1T)")
    p.add_argument("--max-model-size", default=None, help="largest model accepted, all files (default 4T)")
    p.add_argument("--min-free", default=None, help="refuse uploads that would leave less free space (default 1G)")
    p.add_argument("--import-workers", type=int, default=2, help="URL imports run at once")
    p.set_defaults(func=_registry)

    redis_default = os.environ.get("ELDRIC_REDIS_URL", "redis://127.0.0.1:6379/0")
    p = sub.add_parser("beat", help="run Celery beat: schedules inventory syncs, the stale-job reaper, pins")
    p.add_argument("--redis-url", default=redis_default, help="broker and schedule store (default $ELDRIC_REDIS_URL)")
    p.add_argument("--loglevel", default=os.environ.get("ELDRIC_LOG_LEVEL", "INFO"))
    p.set_defaults(func=_beat)

    p = sub.add_parser("flower", help="run Flower (Celery monitoring UI and API) against our broker; "
                                      "arguments after -- go to Flower, e.g. -- --url_prefix=flower")
    p.add_argument("--host", default=os.environ.get("ELDRIC_FLOWER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("ELDRIC_FLOWER_PORT", "5555")))
    p.add_argument("--redis-url", default=redis_default, help="broker (default $ELDRIC_REDIS_URL)")
    p.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then options for Flower itself")
    p.set_defaults(func=_flower)
    client_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
