"""`eldric registry` (no action word): run the data worker's model registry service."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "run the data worker's model registry; with list|upload|delete, an operator command"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=os.environ.get("ELDRIC_REGISTRY_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("ELDRIC_REGISTRY_PORT", "8892")))
    p.add_argument("--storage", default=None, help="storage root (default ~/.eldric/registry)")
    p.add_argument("--redis-url", default=None, help="Redis for import job progress (default $ELDRIC_REDIS_URL)")
    p.add_argument("--max-file-size", default=None, help="largest file accepted, e.g. 200G (default 1T)")
    p.add_argument("--max-model-size", default=None, help="largest model accepted, all files (default 4T)")
    p.add_argument("--min-free", default=None, help="refuse uploads that would leave less free space (default 1G)")
    p.add_argument("--import-workers", type=int, default=2, help="URL imports run at once")


def run(args: argparse.Namespace) -> int:
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
