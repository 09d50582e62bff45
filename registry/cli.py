"""`eldric registry` (no action word): run the data worker's model registry service."""

from __future__ import annotations

import argparse
import sys

HELP = "run the data worker's model registry; with list|upload|delete, an operator command"


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Defaults are None so the environment (ELDRIC_REGISTRY_*) applies when a flag is absent.
    p.add_argument("--host", default=None, help="listen address (default $ELDRIC_REGISTRY_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default $ELDRIC_REGISTRY_PORT or 8892)")
    p.add_argument("--storage", default=None, help="storage root (default $ELDRIC_REGISTRY_STORAGE or ~/.eldric/registry)")
    p.add_argument("--redis-url", default=None, help="Redis for import job progress (default $ELDRIC_REDIS_URL)")
    p.add_argument("--max-file-size", default=None, help="largest file accepted, e.g. 200G (default 1T)")
    p.add_argument("--max-model-size", default=None, help="largest model accepted, all files (default 4T)")
    p.add_argument("--min-free", default=None, help="refuse uploads that would leave less free space (default 1G)")
    p.add_argument("--import-workers", type=int, default=None, help="URL imports run at once (default 2)")


def run(args: argparse.Namespace) -> int:
    from registry.server import RegistrySettings, serve

    try:
        settings = RegistrySettings.from_env(
            host=args.host, port=args.port, storage=args.storage, redis_url=args.redis_url,
            max_file_bytes=args.max_file_size, max_model_bytes=args.max_model_size, min_free_bytes=args.min_free,
            import_workers=args.import_workers)
    except ValueError as exc:
        print(f"eldric registry: {exc}", file=sys.stderr)
        return 2
    serve(host=settings.host, port=settings.port, storage=settings.storage, settings=settings)
    return 0
