"""Pins (desired state) as the API sees them: validate, store, list with coverage, remove.

A pin with `replicas` wants N serving copies among its eligible workers (`selector`, `spread`:
issue 25); its view says how many it wants and which workers serve it now.

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
from eldric.cluster.labels import parse_labels
from eldric.cluster.queues import is_model_serving
from eldric.core.errors import InvalidNameError
from eldric.core.names import ModelName
from eldric.transfer.upstreams import RegistryAllowList


def canonical(model: str, field: str = "model") -> str:
    try:
        return ModelName.parse(model).short
    except InvalidNameError as exc:
        raise BadRequestError(str(exc), field=field) from None


def check_placement(replicas: int | None, selector: dict[str, str], spread: str | None) -> None:
    """400 naming the field: a selector in the labels' grammar, a type that takes model work, spread with replicas."""
    try:
        parse_labels(",".join(f"{k}={v}" for k, v in selector.items()))
    except ValueError as exc:
        raise BadRequestError(f"selector: {exc}", field="selector") from None
    if "type" in selector and not is_model_serving(selector["type"]):
        raise BadRequestError(f"selector type {selector['type']!r}: pins go to inference and cloud workers only",
                              field="selector")
    if spread is not None:
        if replicas is None:
            raise BadRequestError("spread needs replicas (without, every eligible worker gets a copy)", field="spread")
        try:
            parse_labels(f"{spread}=x")
        except ValueError:
            raise BadRequestError(f"spread {spread!r} is not a label name, e.g. zone", field="spread") from None


def pin_model(client: redis.Redis, *, model: str, workers: list[str] | None, auto_update: bool,
              source: str = "ollama", registry: RegistryClient | None = None,
              upstreams: RegistryAllowList | None = None, replicas: int | None = None,
              selector: dict[str, str] | None = None, spread: str | None = None, gpu: bool = False,
              now: float | None = None) -> tuple[dict, bool]:
    """Create or replace the pin of `model`; return (its view, whether it is new).

    source "registry": `model` is a registry model id or name[:version], resolved now
    to one version; source "cluster": a model created or pushed through the Ollama API, pulled from the
    data node's /v2/ (a create distributes a new version itself). Auto-update is an Ollama-registry
    notion and is refused for both.
    """
    selector = dict(selector or {})
    check_placement(replicas, selector, spread)
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
        source=source, source_options=source_options, replicas=replicas, selector=selector, spread=spread,
        gpu=gpu,
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
    cover = pins.coverage(pin, facts)
    served = {*cover[pins.PRESENT], *cover[pins.OUTDATED]}
    serving = [w.id for w in facts if w.online and w.id in served]
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
        "coverage": cover,
        "replicas": pin.replicas,
        "selector": pin.selector,
        "spread": pin.spread,
        "gpu": pin.gpu,
        # null replicas: every eligible worker is wanted, so wanted is how many there are now
        "replicas_wanted": pin.replicas if pin.replicas is not None else sum(map(len, cover.values())),
        "replicas_serving": len(serving),
        "serving": sorted(serving),
    }
