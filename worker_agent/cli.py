"""`eldric worker`: run one node's agent (Celery consumer + the node's HTTP server)."""

from __future__ import annotations

import argparse
import sys

from eldric.cluster.queues import WORKER_TYPES

HELP = "run a worker agent (Celery consumer + node HTTP agent)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--type", required=True, choices=WORKER_TYPES)
    p.add_argument("--name", required=True, help="worker id, unique in the cluster")
    p.add_argument("--port", type=int, default=None, help="agent HTTP port (default: the type's port)")
    p.add_argument("--host", default=None, help="agent bind address (default 127.0.0.1)")
    p.add_argument("--data-dir", default=None, help="agent state directory (default ~/.eldric/NAME)")
    p.add_argument("--label", action="append", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="this node's labels, e.g. zone=a,gpu=h100 (repeatable; default $ELDRIC_LABELS)")
    p.add_argument("--concurrency", type=int, default=None, help="tasks run at once")
    p.add_argument("--loglevel", default=None, help="default $ELDRIC_LOG_LEVEL or INFO")


def run(args: argparse.Namespace) -> int:
    from eldric.core.settings import SettingsError
    from worker_agent.main import run_agent
    from worker_agent.settings import AgentSettings

    try:
        settings = AgentSettings.from_env(worker_id=args.name, worker_type=args.type, port=args.port,
                                          data_dir=args.data_dir, host=args.host, concurrency=args.concurrency,
                                          log_level=args.loglevel,
                                          labels=",".join(args.label) if args.label else None)
    except SettingsError as exc:
        print(f"eldric worker: {exc}", file=sys.stderr)
        return 2
    return run_agent(settings, loglevel=settings.log_level)
