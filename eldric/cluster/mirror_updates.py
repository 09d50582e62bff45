"""Upstream update detection for the data node's mirror: beat asks, the registry checks, Redis shows it.

Beat enqueues `mirror.check_updates(registry_url)` on the maintenance queue; the agent that
takes it calls `check_mirror_updates`, which asks the registry to HEAD every mirrored tag
upstream (`POST /api/v1/model-registry/mirror/check`; nothing is pulled) and writes the
answer to `eldric:mirror:updates` (keys.MIRROR_UPDATES): one field per mirrored tag
(`repository:tag`) with JSON {digest, upstream_digest, update_available, error, checked_at},
replaced as a whole each time. The controller's /metrics and model view read it.
"""

from __future__ import annotations

import json
import time

import redis
import requests

from eldric.cluster import keys
from eldric.core.errors import EldricError
from eldric.core.redaction import redact_url, redact_urls
from eldric.transfer.http import error_text
from eldric.transfer.model_registry import MIRROR_CHECK_PATH, ModelRegistryApi

TIMEOUT = (10, 600)  # a check HEADs every mirrored tag upstream


class MirrorCheckError(EldricError):
    """The registry could not be asked or refused; the previous answer stays in Redis."""


def check_mirror_updates(client: redis.Redis, registry_url: str, secret: str = "",
                         session: requests.Session | None = None, now: float | None = None) -> dict:
    """Run one check on the registry and record it; returns {checked, updates_available}."""
    api = ModelRegistryApi(registry_url, secret, session, timeout=TIMEOUT)
    try:
        resp = api.request("POST", MIRROR_CHECK_PATH)
    except requests.RequestException as exc:
        raise MirrorCheckError(f"cannot reach the registry at {redact_url(registry_url)}: {redact_urls(str(exc))}") from None
    if resp.status_code != 200:
        raise MirrorCheckError(f"the registry answered {resp.status_code} to the mirror check: {error_text(resp)}")
    results = resp.json().get("checked") or []
    record_updates(client, results, time.time() if now is None else now)
    return {"checked": len(results), "updates_available": sum(1 for r in results if r.get("update_available"))}


def record_updates(client: redis.Redis, results: list[dict], now: float) -> None:
    fields = {r["name"]: json.dumps({"digest": r.get("digest"), "upstream_digest": r.get("upstream_digest"),
                                     "update_available": bool(r.get("update_available")), "error": r.get("error"),
                                     "checked_at": now}) for r in results if r.get("name")}
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.MIRROR_UPDATES)
    if fields:
        pipe.hset(keys.MIRROR_UPDATES, mapping=fields)
    pipe.execute()


def read_updates(client: redis.Redis) -> dict[str, dict]:
    """`repository:tag` -> the last check's record, from Redis."""
    out = {}
    for field, raw in client.hgetall(keys.MIRROR_UPDATES).items():
        try:
            out[field.decode() if isinstance(field, bytes) else field] = json.loads(raw)
        except ValueError:
            continue
    return out


def ollama_short_name(mirrored: str) -> str:
    """`library/qwen2.5:0.5b` -> `qwen2.5:0.5b` (how the cluster's model view names Ollama models)."""
    return mirrored.removeprefix("library/")


def mirror_updates_by_model(client: redis.Redis) -> dict[str, dict]:
    """Cluster model name -> {digest, upstream_digest, checked_at} for mirrored tags whose upstream moved."""
    return {ollama_short_name(name): {k: r.get(k) for k in ("digest", "upstream_digest", "checked_at")}
            for name, r in read_updates(client).items() if r.get("update_available")}
