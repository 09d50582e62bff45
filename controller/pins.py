"""Pins (desired state) as the API sees them: validate, store, list with coverage, remove.

The pulls themselves are started by the scheduled `pins.reconcile` (worker_agent/maintenance.py),
so a pin also reaches workers that join later.
"""

from __future__ import annotations

import time

import redis

from controller.workers import list_workers, select_targets
from controller.distribute import resolve_registry_model
from eldric.core.request_errors import BadRequestError, NotFoundError
from controller.pull_jobs import parse_model
from controller.registry_client import RegistryClient
from eldric.cluster import pins
from eldric.core.errors import InvalidNameError
from eldric.core.names import ModelName
from eldric.transfer.upstreams import RegistryAllowList


def canonical(model: str, field: str = "model") -> str:
    try:
        return ModelName.parse(model).short
    except InvalidNameError as exc:
        raise BadRequestError(str(exc), field=field) from None


def pin_model(client: redis.Redis, *, model: str, workers: list[str] | None, auto_update: bool,
              source: str = "ollama", registry: RegistryClient | None = None,
              upstreams: RegistryAllowList | None = None, now: float | None = None) -> tuple[dict, bool]:
    """Create or replace the pin of `model`; return (its view, whether it is new).

    source "registry": `model` is a registry model id or name[:version], resolved now
    to one version; source "cluster": a model created or pushed through the Ollama API, pulled from the
    data node's /v2/ (a create distributes a new version itself). Auto-update is an Ollama-registry
    notion and is refused for both.
    """
    source_options = None
    if source != "ollama" and auto_update:
        raise BadRequestError("auto_update applies to Ollama-registry pins only", field="auto_update")
    if source == "registry":
        if registry is None:
            raise BadRequestError("no registry configured", field="source")
        source_options = {}
        model = resolve_registry_model(registry, model, source_options)
    name = canonical(model)
    if source == "ollama" and upstreams is not None:
        parse_model(name, upstreams)  # a registry no agent may pull from: 400 now, not failures at every reconcile
    if workers is not None:
        _, refused, unknown = select_targets(list_workers(client), workers)
        if unknown:
            raise NotFoundError(f"unknown worker(s): {', '.join(unknown)}")
        if refused:
            raise BadRequestError(f"not inference or cloud workers, they never take model work: {', '.join(refused)}",
                                  field="workers")
    existing = pins.get_pin(client, name)
    pin = pins.Pin(
        model=name, workers=tuple(dict.fromkeys(workers)) if workers is not None else None,
        auto_update=auto_update, created_at=existing.created_at if existing else (time.time() if now is None else now),
        # The tag's last known digest stays valid whatever else changed.
        upstream_digest=existing.upstream_digest if existing else None,
        checked_at=existing.checked_at if existing else None,
        source=source, source_options=source_options,
    )
    pins.save_pin(client, pin)
    return view(pin, pins.load_worker_facts(client, [name])), existing is None


def list_pins(client: redis.Redis) -> list[dict]:
    found = pins.list_pins(client)
    facts = pins.load_worker_facts(client, [p.model for p in found])
    return [view(p, facts) for p in found]


def get_pin(client: redis.Redis, model: str) -> dict:
    pin = pins.get_pin(client, canonical(model))
    if pin is None:
        raise NotFoundError(f"no pin for {model!r}")
    return view(pin, pins.load_worker_facts(client, [pin.model]))


def unpin_model(client: redis.Redis, model: str) -> None:
    """Forget the pin; models already on workers stay where they are."""
    if not pins.delete_pin(client, canonical(model)):
        raise NotFoundError(f"no pin for {model!r}")


def view(pin: pins.Pin, facts: list[pins.WorkerFacts]) -> dict:
    return {
        "model": pin.model,
        "workers": list(pin.workers) if pin.workers is not None else None,
        "auto_update": pin.auto_update,
        "source": pin.source,
        "registry_model_id": (pin.source_options or {}).get("registry_model_id"),
        "created_at": pin.created_at,
        "upstream_digest": pin.upstream_digest,
        "checked_at": pin.checked_at,
        "check_error": pin.check_error,
        "coverage": pins.coverage(pin, facts),
    }
