"""Per-app handles (Redis client, Celery producer) kept in app.extensions, not in globals."""

from celery import Celery
from flask import current_app
import redis

from controller.models import InventoryCache
from controller.pull_jobs import JobLimits
from eldric.transfer.registry_upstream import RegistryUpstream
from eldric.transfer.upstreams import AddressPolicy, RegistryAllowList
from controller.registry_client import RegistryClient


def redis_client() -> redis.Redis:
    return current_app.extensions["eldric.redis"]


def producer() -> Celery:
    return current_app.extensions["eldric.celery"]


def stale_after() -> float:
    return float(current_app.config["STALE_WORKER_SECONDS"])


def offline_grace() -> float:
    return float(current_app.config["OFFLINE_GRACE_SECONDS"])


def job_limits(deadline_seconds: float | None = None) -> JobLimits:
    cfg = current_app.config
    return JobLimits(deadline_seconds=deadline_seconds or cfg["JOB_DEADLINE_SECONDS"],
                     retention_seconds=cfg["JOB_RETENTION_SECONDS"], keep_max=cfg["JOB_HISTORY_MAX"],
                     forget_after=cfg["WORKER_FORGET_SECONDS"], upstreams=upstreams(),
                     url_policy=AddressPolicy.parse(cfg["URL_ALLOWLIST"]), registry=registry_upstream(),
                     placement_reserve=int(cfg["PLACEMENT_RESERVE_BYTES"]))


def registry_upstream() -> RegistryUpstream | None:
    """Where the agents pull registry names from, read from the same settings they read; None with
    ELDRIC_CHECK_UPSTREAM=false (the controller then queues without asking it)."""
    cfg = current_app.config
    if not cfg["CHECK_UPSTREAM"]:
        return None
    return RegistryUpstream(cfg["OLLAMA_REGISTRY"], tuple(cfg["INSECURE_REGISTRIES"]), tuple(cfg["ALLOWED_REGISTRIES"]),
                            AddressPolicy.parse(cfg["URL_ALLOWLIST"]))


def upstreams() -> RegistryAllowList:
    """The registries model names may name, as the agents judge them (same settings, same defaults)."""
    cfg = current_app.config
    return RegistryAllowList.build(cfg["ALLOWED_REGISTRIES"], mirror=cfg["OLLAMA_REGISTRY"],
                                   insecure=cfg["INSECURE_REGISTRIES"])


def registry_client() -> RegistryClient:
    """The controller's client of the data worker's registry (one per app)."""
    client = current_app.extensions.get("eldric.registry_client")
    if client is None:
        client = RegistryClient(current_app.config["REGISTRY_URL"], token=current_app.config.get("CLUSTER_SECRET", ""))
        current_app.extensions["eldric.registry_client"] = client
    return client


def inventory_cache() -> InventoryCache:
    """This process's parsed worker inventories (revalidated against Redis on every read)."""
    client = redis_client()
    cache = current_app.extensions.get("eldric.inventory_cache")
    if cache is None or cache.source is not client:  # a new client may be another database (tests swap it)
        cache = current_app.extensions["eldric.inventory_cache"] = InventoryCache(source=client)
    return cache
