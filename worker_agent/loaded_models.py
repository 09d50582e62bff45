"""What this node's backends have loaded now, reported into Redis every heartbeat period.

Ollama says it itself (`GET /api/ps`); llama.cpp's server and vLLM's OpenAI server load what they
serve, so a model their `GET /v1/models` lists counts as loaded. The report is Ollama's
ProcessModelResponse per model (name as this node's inventory lists it, plus `backend` and, for
the OpenAI servers, `backend_model`: the id they know it by), kept under a key with a TTL of
three periods, so a stopped agent's report goes away on its own.

Why reported rather than asked for: the controller's `/api/ps` and every routing decision read all
reports in one MGET (well under a millisecond at 1,000 workers), where asking 1,000 agents in
parallel on each call would take as long as the slowest of them and load every node. The price is
staleness of up to one period, which a routed unload shortens: the agent reports again at once.
"""

from __future__ import annotations

import logging
import threading

import redis
import requests

from eldric.cluster import inference_load, workers
from eldric.core.formats import parameter_size_label
from eldric.transfer.http import http_session
from worker_agent import installers
from worker_agent.installers import InstallError, openai_models
from worker_agent.installers.ollama import served_name

log = logging.getLogger(__name__)

OLLAMA = "ollama"
OPENAI_SERVERS = ("llamacpp", "vllm")
# llama.cpp and vLLM keep what they serve until they stop; Ollama shows "forever" as a far date too.
FOREVER = "2318-01-01T00:00:00Z"
ASK_TIMEOUT = 2.0  # seconds per backend; a backend slower than that counts as having nothing loaded


def backend_urls(settings) -> dict[str, str]:
    """backend -> API URL, for the node's backends that can answer inference (Ollama, llama.cpp, vLLM)."""
    try:
        configs = installers.backend_configs(settings)
    except InstallError:
        return {}
    return {b: c.url.rstrip("/") for b, c in configs.items() if c.url and b in (OLLAMA, *OPENAI_SERVERS)}


def loaded_models(urls: dict[str, str], inventory: dict[str, dict], session: requests.Session,
                  timeout: float = ASK_TIMEOUT, keep: list[dict] | None = None) -> list[dict]:
    """The node's loaded models, one entry per (model, backend), for the inventory's models only.

    `keep`: the last report, whose llama.cpp and vLLM entries are kept instead of asking those servers
    (while requests stream through them: llama-cpp-python's server ends a running answer when any
    other request, its /v1/models too, arrives; see `publish`).
    """
    out: list[dict] = []
    for backend, url in urls.items():
        served = {name: rec for name, rec in inventory.items() if backend in (rec.get("backends") or [])}
        if not served:
            continue
        if keep is not None and backend in OPENAI_SERVERS:
            out.extend(m for m in keep if m.get("backend") == backend and m.get("name") in served)
            continue
        try:
            if backend == OLLAMA:
                out.extend(_ollama(url, served, session, timeout))
            else:
                ids = openai_models.model_ids(url, timeout)
                out.extend(_listed(backend, ids, served))
        except (InstallError, requests.RequestException, ValueError) as exc:
            log.debug("%s at %s: cannot tell what is loaded: %s", backend, url, exc)
    return out


def _ollama(url: str, served: dict[str, dict], session: requests.Session, timeout: float) -> list[dict]:
    r = session.get(f"{url}/api/ps", timeout=timeout)
    r.raise_for_status()
    names = {served_name(n): n for n in served}
    out = []
    for entry in r.json().get("models") or []:
        name = names.get(entry.get("name") or entry.get("model") or "")
        if name:
            out.append({**entry, "name": name, "model": name, "backend": OLLAMA})
    return out


def _listed(backend: str, ids: list[str], served: dict[str, dict]) -> list[dict]:
    out = []
    for name, rec in served.items():
        match = next((i for i in ids if openai_models.lists([i], name, "")), None)
        if match is not None:
            out.append({**process_entry(name, rec), "backend": backend, "backend_model": match})
    return out


def process_entry(name: str, rec: dict) -> dict:
    """Ollama's ProcessModelResponse for a model a server with no unload keeps loaded."""
    d = rec.get("details") or {}
    family = d.get("family") or d.get("architecture") or ""
    return {"name": name, "model": name, "size": int(rec.get("size") or 0),
            "digest": (rec.get("digest") or "").removeprefix("sha256:"),
            "details": {"parent_model": d.get("parent_model", ""), "format": d.get("format") or rec.get("format") or "",
                        "family": family, "families": d.get("families") or ([family] if family else []),
                        "parameter_size": d.get("parameter_size") or parameter_size_label(d.get("parameter_count")),
                        "quantization_level": d.get("quantization_level") or d.get("quantization") or ""},
            "expires_at": FOREVER, "size_vram": 0, "context_length": int(d.get("context_length") or 0)}


def publish(agent, session: requests.Session | None = None) -> list[dict]:
    """Ask the backends and replace this worker's report in Redis.

    While routed requests are in flight on this worker, llama.cpp's and vLLM's servers are not asked
    and their part of the last report stands: llama-cpp-python's server (interrupt_requests, its
    default) stops the answer it is streaming when another request comes in, a /v1/models too, and
    the report is only needed between requests, to route the next ones.
    """
    wid = agent.worker_id
    keep = workers.loaded(agent.redis, [wid])[wid] if inference_load.in_flight(agent.redis, [wid])[wid] else None
    with (session or http_session()) as s:  # the backends are beside the agent: no egress proxy
        found = loaded_models(backend_urls(agent.settings), workers.inventory(agent.redis, wid), s, keep=keep)
    workers.publish_loaded(agent.redis, agent.worker_id, found, ttl=agent.settings.heartbeat_seconds * 3)
    return found


class Reporter(threading.Thread):
    """Publishes the report every heartbeat period; a thread of its own, so a slow backend never delays
    the heartbeat that keeps the worker online."""

    def __init__(self, agent) -> None:
        super().__init__(name="loaded-models", daemon=True)
        self.agent = agent
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                publish(self.agent)
            except redis.RedisError as exc:
                log.warning("could not report the loaded models: %s", exc)
            if self.stopped.wait(self.agent.settings.heartbeat_seconds):
                return

    def stop(self) -> None:
        self.stopped.set()
