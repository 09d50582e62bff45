"""The `eldric` command: operator commands (clients of the REST API) and the service start commands.

Each service owns its start command (`controller/cli.py`, `worker_agent/cli.py`, `registry/cli.py`);
this module finds them by module name, so the foundation imports no service.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pydantic import Field

from eldric import __version__
from eldric.client import cli as client_cli
from eldric.cluster.celeryconf import celery_config
from eldric.cluster.shared_settings import RedisSettings

SERVICES = {"controller": "controller.cli", "worker": "worker_agent.cli", "registry": "registry.cli"}


def _beat(args: argparse.Namespace) -> int:
    from celery import Celery
    from redbeat.schedulers import REDBEAT_REDIS_KEY

    from eldric import logging_setup
    from eldric.cluster.schedules import ScheduleSettings, beat_config, redbeat_client

    try:
        schedule = ScheduleSettings.from_env(redis_url=args.redis_url, log_level=args.loglevel)
        logging_setup.format_from_env()
        conf = beat_config(schedule.redis_url, schedule)  # a bad sentinel:// URL fails here
    except ValueError as exc:
        print(f"eldric beat: {exc}", file=sys.stderr)
        return 2
    logging_setup.connect_celery_signals()
    print(f"eldric beat: effective configuration: {schedule.effective()}", file=sys.stderr)
    app = Celery("eldric-beat")
    app.conf.update(conf)
    setattr(app, REDBEAT_REDIS_KEY, redbeat_client(schedule.redis_url, schedule))  # RedBeat uses it, builds none
    # RedBeat keeps the schedule in Redis and takes a lock there: a second beat waits for it.
    app.Beat(loglevel=schedule.log_level, max_interval=schedule.loop_seconds).run()
    return 0


class FlowerSettings(RedisSettings):
    flower_host: str = Field("127.0.0.1", description="where `eldric flower` listens")
    flower_port: int = Field(5555, ge=0, le=65535, description="where `eldric flower` listens")


def _flower(args: argparse.Namespace) -> int:
    """Run Flower in this process on a Celery app configured like every other (eldric/cluster/celeryconf.py:
    task events on; for a sentinel:// URL the Sentinel transport and its master name, which no Flower or
    Celery command-line flag can carry). The broker URL and its password never reach argv or the environment."""
    try:
        s = FlowerSettings.from_env(redis_url=args.redis_url, flower_host=args.host, flower_port=args.port)
        conf = celery_config(s.redis_url)
    except ValueError as exc:
        print(f"eldric flower: {exc}", file=sys.stderr)
        return 2
    from celery import Celery
    from celery.bin.celery import celery as celery_command

    extra = args.flower_args[1:] if args.flower_args[:1] == ["--"] else args.flower_args
    os.environ.pop("CELERY_BROKER_URL", None)  # Celery lets it override the app's broker_url
    app = Celery("eldric-flower")
    app.conf.update(conf)
    app.set_default()  # what `celery` uses when no -A is given
    return celery_command.main(args=["flower", f"--port={s.flower_port}", f"--address={s.flower_host}", *extra],
                               prog_name="eldric flower")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eldric", description="Eldric Model Manager")
    parser.add_argument("--version", action="version", version=f"eldric {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, module in SERVICES.items():
        # By name, at run time: the foundation never imports a service (see the import contracts).
        service = importlib.import_module(module)
        p = sub.add_parser(name, help=service.HELP)
        service.add_arguments(p)
        p.set_defaults(func=service.run)

    p = sub.add_parser("beat", help="run Celery beat: schedules inventory syncs, the stale-job reaper, pins")
    p.add_argument("--redis-url", default=None, help="broker and schedule store (default $ELDRIC_REDIS_URL)")
    p.add_argument("--loglevel", default=None, help="default $ELDRIC_LOG_LEVEL or INFO")
    p.set_defaults(func=_beat)

    p = sub.add_parser("flower", help="run Flower (Celery monitoring UI and API) against our broker; "
                                      "arguments after -- go to Flower, e.g. -- --url_prefix=flower")
    p.add_argument("--host", default=None, help="default $ELDRIC_FLOWER_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default $ELDRIC_FLOWER_PORT or 5555")
    p.add_argument("--redis-url", default=None, help="broker (default $ELDRIC_REDIS_URL)")
    p.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then options for Flower itself")
    p.set_defaults(func=_flower)
    client_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
