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
    p.add_argument("--upstream", default=None,
                   help="registry /v2/ pulls missing models through from; none turns the pull-through cache off "
                        "(default $ELDRIC_MIRROR_UPSTREAM or https://registry.ollama.ai)")
    p.add_argument("--tag-ttl", default=None,
                   help="a mirrored tag is asked upstream again after this long, e.g. 30m (default $ELDRIC_MIRROR_TAG_TTL or 1h)")
    p.add_argument("--upstream-timeout", default=None,
                   help="longest wait for upstream to connect or answer a manifest request, e.g. 5s; a cached tag "
                        "is served then (default $ELDRIC_MIRROR_UPSTREAM_TIMEOUT or 5s, at most 25s)")
    p.add_argument("--mirror-max-size", default=None,
                   help="evict least recently used mirrored blobs past this size, e.g. 500G (default $ELDRIC_MIRROR_MAX_SIZE or no limit)")


def run(args: argparse.Namespace) -> int:
    from registry.server import RegistrySettings, serve

    try:
        settings = RegistrySettings.from_env(
            host=args.host, port=args.port, storage=args.storage, redis_url=args.redis_url,
            max_file_bytes=args.max_file_size, max_model_bytes=args.max_model_size, min_free_bytes=args.min_free,
            import_workers=args.import_workers, mirror_upstream=args.upstream, mirror_tag_ttl=args.tag_ttl,
            mirror_max_bytes=args.mirror_max_size, mirror_upstream_timeout=args.upstream_timeout)
    except ValueError as exc:
        print(f"eldric registry: {exc}", file=sys.stderr)
        return 2
    serve(host=settings.host, port=settings.port, storage=settings.storage, settings=settings)
    return 0
