"""Starting a distribute job: resolve the source, pick targets, keep secrets out of sight, enqueue."""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

import redis
from celery import Celery

from controller.models import models_of
from controller.workers import get_worker
from eldric.core.request_errors import BadRequestError, NotFoundError
from controller.pull_jobs import JobLimits, check_upstream, choose_targets, enqueue_placed, parse_model
from controller.target_placement import PlacementRequest
from controller.registry_client import RegistryClient, error_message
from eldric.cluster import workers as cluster_workers
from eldric.cluster.queues import TASK_DISTRIBUTE
from eldric.cluster.registry_api import ID_PATTERN
from eldric.core.digests import is_digest
from eldric.core.errors import InvalidNameError
from eldric.core.names import FileModelRef
from eldric.transfer.errors import HostNotAllowedError
from eldric.transfer.model_registry import API_PREFIX, model_path
from eldric.transfer.upstreams import AddressPolicy, is_http_url
from eldric.core.redaction import redact_url

SOURCES = ("registry", "worker", "url", "ollama")
_FIELDS_OF = {"worker": ("worker",), "url": ("url", "token", "sha256", "filename")}


def start_distribute(client: redis.Redis, producer: Celery, registry: RegistryClient, *, model: str,
                     source: dict, workers: list[str] | None, limits: JobLimits, caps: dict | None = None,
                     partial_ok: bool = False, placement: PlacementRequest | None = None) -> str:
    """`placement`: replicas / selector / spread, sized by the manifest (ollama), the catalog (registry) or
    the source worker's inventory (worker); a URL's size is unknown until fetched (only the reserve counts)."""
    kind = source.get("type")
    size: int | None = None
    options: dict = {"source": kind, **(caps or {})}
    if partial_ok:  # the agents read it from the job's options (worker_agent/distributing.py)
        options["partial_ok"] = True
    secrets: dict = {}
    stray = sorted(k for k in ("worker", "url", "token", "sha256", "filename")
                   if source.get(k) is not None and k not in _FIELDS_OF.get(kind, ()))
    if stray:
        raise BadRequestError(f"source.{', source.'.join(stray)} does not apply to source type {kind!r}", field="source")
    chosen = choose_targets(client, workers, limits)  # cheap checks first: bad targets need no source lookup
    if kind == "ollama":
        name = parse_model(model, limits.upstreams)
        size = check_upstream(name, limits.registry)
        model = name.short
    elif kind == "worker":
        model = _from_worker(client, model, source, options)
        size = _size_of(cluster_workers.inventory(client, options["from_worker"]).get(model))
    elif kind == "registry":
        found = find_registry_model(registry, model)
        model, size = _registry_options(found, registry, options), _size_of(found)
    elif kind == "url":
        model = _from_url(model, source, options, secrets, limits.url_policy)
    else:
        raise BadRequestError(f"source.type must be one of {', '.join(SOURCES)}", field="source")
    targets = [wid for wid in chosen if wid != options.get("from_worker")]
    if not targets:
        raise BadRequestError("no target worker left once the source worker is excluded", field="workers")
    return enqueue_placed(client, producer, kind="distribute", task=TASK_DISTRIBUTE, model=model, targets=targets,
                          source=kind, limits=limits, options=options, secrets=secrets, placement=placement, size=size)


def _size_of(record: dict | None) -> int | None:
    try:
        return int(record["size"]) if record and record.get("size") is not None else None
    except (TypeError, ValueError):
        return None


def _from_worker(client: redis.Redis, model: str, source: dict, options: dict) -> str:
    from_worker = source.get("worker")
    if not isinstance(from_worker, str) or not from_worker:
        raise BadRequestError("source.worker names the worker to copy from", field="source")
    worker = get_worker(client, from_worker)
    if worker is None:
        raise NotFoundError(f"unknown source worker {from_worker!r}")
    held = models_of(client, from_worker)
    if model not in held:
        model = parse_model(model).short  # inventories list Ollama models by their short name
        if model not in held:
            raise NotFoundError(f"worker {from_worker} does not have model '{model}'")
    options["from_worker"] = from_worker
    return model


def resolve_registry_model(registry: RegistryClient, model: str, options: dict) -> str:
    """`model` is a registry model id, or `name[:version]` (the newest ready version): its worker-side name,
    its id, registry and format put in `options`."""
    return _registry_options(find_registry_model(registry, model), registry, options)


def _registry_options(chosen: dict, registry: RegistryClient, options: dict) -> str:
    options.update(registry_model_id=chosen["id"], registry_url=registry.base_url, format=chosen.get("format"))
    return file_model_name(f"{chosen['name']}:{chosen['version']}")


def find_registry_model(registry: RegistryClient, model: str) -> dict:
    """The catalog record of `model`: a registry model id, or `name[:version]` (the newest ready version)."""
    # Only an id is looked up by path: a name such as "storage" or "upload" is another registry route.
    is_id = re.fullmatch(ID_PATTERN, model) is not None
    resp = registry.send("GET", model_path(model)) if is_id else None
    if resp is None or resp.status_code == 404 or resp.status_code == 400:
        name, _, version = model.partition(":")
        query = f"name={quote(name)}&limit=100"
        listing = registry.send("GET", API_PREFIX, query=query)
        found = [m for m in (listing.json().get("models", []) if listing.ok else [])
                 if m.get("state", "ready") == "ready" and (not version or m.get("version") == version)]
        if not found:
            raise NotFoundError(f"no model {model!r} in the registry")
        chosen = found[0]
    elif resp.ok:
        chosen = resp.json()
    else:
        raise BadRequestError(f"registry answered {resp.status_code}: {error_message(resp)}", field="model")
    return chosen


def file_model_name(reference: str) -> str:
    """The canonical `[namespace/]name:version`; 400 naming `model` when no worker could store it."""
    try:
        return str(FileModelRef.parse(reference))
    except InvalidNameError as exc:
        raise BadRequestError(str(exc), field="model") from None


def _from_url(model: str, source: dict, options: dict, secrets: dict, policy: AddressPolicy | None = None) -> str:
    url = source.get("url")
    if not is_http_url(url):
        raise BadRequestError("source.url must be an http(s) URL with a valid host and port", field="source")
    if policy is not None:
        try:  # a literal internal address is refused here; names are judged by the agent after DNS
            policy.check_literal(url)
        except HostNotAllowedError as exc:
            raise BadRequestError(f"source.url {exc}", field="source") from None
    sha256 = source.get("sha256")
    if sha256 is not None and not is_digest(sha256):
        raise BadRequestError("source.sha256 must be sha256:<64 hex digits>", field="source")
    filename = source.get("filename") or urlsplit(url).path.rsplit("/", 1)[-1]
    if not filename or "/" in filename or "\\" in filename or filename.startswith(".") or "\x00" in filename:
        raise BadRequestError("source.filename is not a plain file name", field="source")
    name = file_model_name(model)
    options.update(origin=redact_url(url), filename=filename, sha256=sha256)
    secrets["url"] = url  # query strings carry S3 signatures: kept out of job views, task args and logs
    if source.get("token"):
        secrets["token"] = str(source["token"])
    return name
