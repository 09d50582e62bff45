"""The agent's inference endpoint: the controller's routed requests, forwarded to a backend on this node.

`POST /inference/<backend>/<endpoint>?model=<name>[&backend_model=<id>]`, behind the cluster secret like every agent call,
where `endpoint` is one of Ollama's (`api/chat`, `api/generate`, `api/embed`, `api/embeddings`) or
OpenAI's (`v1/chat/completions`, `v1/completions`, `v1/embeddings`) and `model` the name this node's
inventory lists (the body keeps the name the client asked). Going through the agent lets backends
listen on 127.0.0.1 of their node and keeps backend addresses out of the controller.

- Ollama: every endpoint as is (Ollama serves both APIs), the model renamed to the inventory's.
- llama.cpp, vLLM (their OpenAI servers, ELDRIC_LLAMACPP_URL / ELDRIC_VLLM_URL): OpenAI endpoints with
  the model renamed to the id the server lists it under; Ollama's translated (worker_agent.ollama_openai).
  An unload (`keep_alive: 0`) is answered at once: these servers keep what they serve loaded.

Answers stream through as they arrive. Errors are Ollama's `{"error": "..."}`: 404 when no backend here
serves the model, 502 when the backend cannot be reached (the controller then tries another worker),
and the backend's own status for what it refused.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterator

import requests
from flask import Blueprint, Flask, Response, jsonify, request

from eldric.core.unload import is_unload
from eldric.transfer.http import http_session
from worker_agent import last_use, loaded_models
from worker_agent.installers import InstallError, openai_models
from worker_agent.ollama_openai import OPENAI_PATH, Timer, error_message, now_iso, ollama_answer, ollama_stream, \
    openai_request, sse_events
from worker_agent.runtime import Agent

log = logging.getLogger(__name__)

OLLAMA_ENDPOINTS = ("api/chat", "api/generate", "api/embed", "api/embeddings")
OPENAI_ENDPOINTS = ("v1/chat/completions", "v1/completions", "v1/embeddings")
CONNECT_SECONDS = 5.0
# How long an OpenAI server's model list is reused: asking costs a few ms of the first token, and a
# model the list lacks is asked again at once (a server restarted on another file is seen then).
IDS_SECONDS = 30.0
IDS_TIMEOUT = 2.0


# The setting naming each backend's inference server (what an operator must set when it is missing).
URL_SETTINGS = {"ollama": "ELDRIC_OLLAMA_URL", "llamacpp": "ELDRIC_LLAMACPP_URL", "vllm": "ELDRIC_VLLM_URL"}

def _error(message: str, status: int) -> tuple[Response, int]:
    return jsonify(error=message), status


class ModelIds:
    """The ids each OpenAI server lists, reused for IDS_SECONDS (a routed request should not cost a second call)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, list[str]]] = {}

    def backend_id(self, url: str, model: str) -> str | None:
        for fresh in (False, True):
            at, ids = self._seen.get(url, (0.0, []))
            if fresh or time.monotonic() - at > IDS_SECONDS:
                ids = openai_models.model_ids(url, IDS_TIMEOUT)
                self._seen[url] = (time.monotonic(), ids)
            match = next((i for i in ids if openai_models.lists([i], model, "")), None)
            if match is not None:
                return match
        return None


def register(app: Flask, agent: Agent) -> None:
    app.register_blueprint(blueprint(agent))


def blueprint(agent: Agent, session: requests.Session | None = None) -> Blueprint:
    bp = Blueprint("inference_proxy", __name__)
    session = session or http_session()  # the backends are on this node: no egress proxy
    ids = ModelIds()

    @functools.cache
    def urls() -> dict[str, str]:  # the settings are frozen: once per process (at the first call, as the
        return loaded_models.backend_urls(agent.settings)  # app is also built without an agent to list its routes)

    @bp.post("/inference/<backend>/<path:endpoint>")
    def infer(backend: str, endpoint: str):
        url = urls().get(backend)
        timeout = (CONNECT_SECONDS, agent.settings.backend_timeout_seconds)
        if url is None:
            if backend in agent.settings.backends and backend in URL_SETTINGS:  # files placed, no server named
                return _error(f"worker {agent.worker_id} holds the model for {backend} but has no {backend} server "
                              f"to answer: set {URL_SETTINGS[backend]} on it to the server's URL", 503)
            return _error(f"backend {backend!r} does not serve inference on worker {agent.worker_id}", 404)
        if endpoint not in OLLAMA_ENDPOINTS + OPENAI_ENDPOINTS:
            return _error(f"no inference endpoint /{endpoint}", 404)
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            return _error("request body must be JSON", 400)
        if not isinstance(body, dict):
            return _error("request body must be a JSON object", 400)
        model = request.args.get("model") or body.get("model") or ""
        unload = is_unload(endpoint, body)
        if not unload:  # the most truthful last use (eviction's LRU): this node served the model now
            last_use.served(agent.redis, agent.worker_id, model)
        if backend == loaded_models.OLLAMA:
            answer = _forward(session, f"{url}/{endpoint}", {**body, "model": model}, timeout, backend)
        else:
            try:
                # The id the controller read from this agent's report saves asking the server (which
                # llama-cpp-python's would take as a reason to end another answer it is streaming).
                backend_model = request.args.get("backend_model") or ids.backend_id(url, model)
            except InstallError as exc:
                return _error(f"{backend} on worker {agent.worker_id}: {exc}", 502)
            if backend_model is None:
                return _error(f"model '{model}' not found", 404)
            if endpoint in OPENAI_ENDPOINTS:
                answer = _forward(session, f"{url}/{endpoint}", {**body, "model": backend_model}, timeout, backend)
            elif endpoint in ("api/generate", "api/chat") and (unload or _is_load(endpoint, body)):
                answer = jsonify(_load_answer(endpoint, body, unload, backend))
            else:
                answer = _translated(session, url, endpoint, body, backend_model, timeout, backend)
        if unload:
            _report_soon(agent)
        return answer

    return bp


def _is_load(endpoint: str, body: dict) -> bool:
    """Ollama loads a model on a generate or chat with nothing to generate: here it is loaded already."""
    return not body.get("prompt") if endpoint == "api/generate" else not body.get("messages")


def _load_answer(endpoint: str, body: dict, unload: bool, backend: str) -> dict:
    out = {"model": body.get("model", ""), "created_at": now_iso(), "done": True,
           "done_reason": "unload" if unload else "load"}
    out.update({"message": {"role": "assistant", "content": ""}} if endpoint == "api/chat" else {"response": ""})
    if unload:
        out["unloaded"] = False  # ours, beside Ollama's keys: the server keeps serving it
        out["reason"] = f"{backend}'s server keeps the models it serves loaded until it stops"
    return out


def _post(session: requests.Session, url: str, body: dict, timeout, backend: str) -> requests.Response | tuple:
    try:
        return session.post(url, json=body, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        return _error(f"{backend} at {url} unreachable: {exc}", 502)


def _forward(session: requests.Session, url: str, body: dict, timeout, backend: str):
    """Pass the backend's answer through as it arrives (status, type, bytes)."""
    resp = _post(session, url, body, timeout, backend)
    refused = _refusal(resp)
    if refused is not None:
        return refused
    return Response(_chunks(resp), status=resp.status_code,
                    content_type=resp.headers.get("Content-Type", "application/json"))


def _refusal(resp: requests.Response | tuple):
    """The error answer to give instead of `resp` (unreachable, or the backend refused), None when it answers."""
    if isinstance(resp, tuple):
        return resp
    if resp.status_code >= 400:
        raw = resp.content
        resp.close()
        return _error(error_message(resp.status_code, raw), resp.status_code)
    return None


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    try:
        yield from resp.iter_content(chunk_size=None)
    except requests.RequestException as exc:
        log.warning("backend stream broke: %s", exc)  # the client sees its stream end
    finally:
        resp.close()


def _translated(session: requests.Session, url: str, endpoint: str, body: dict, backend_model: str, timeout,
                backend: str):
    timer = Timer()
    resp = _post(session, f"{url}/{OPENAI_PATH[endpoint]}", openai_request(endpoint, body, backend_model),
                 timeout, backend)
    refused = _refusal(resp)
    if refused is not None:
        return refused
    model = body.get("model") or ""
    streamed = endpoint in ("api/chat", "api/generate") and body.get("stream", True) is not False
    if not streamed:
        try:
            answer = resp.json()
        except ValueError:
            return _error(f"{backend} answered something that is not JSON", 502)
        finally:
            resp.close()
        return jsonify(ollama_answer(endpoint, answer, model, timer))

    def lines() -> Iterator[bytes]:
        try:
            for line in ollama_stream(endpoint, sse_events(resp.iter_content(chunk_size=None)), model, timer):
                yield (json.dumps(line) + "\n").encode()
        except requests.RequestException as exc:
            yield (json.dumps({"error": f"{backend} stream broke: {exc}"}) + "\n").encode()
        finally:
            resp.close()
    return Response(lines(), content_type="application/x-ndjson")


def _report_soon(agent: Agent) -> None:
    """After an unload: report what is loaded again now, not at the next period (off the request's thread)."""
    def report() -> None:
        try:
            loaded_models.publish(agent)
        except Exception as exc:  # noqa: BLE001  (a report is best effort; the next period's corrects it)
            log.warning("could not report the loaded models after an unload: %s", exc)
    threading.Thread(target=report, name="loaded-models-now", daemon=True).start()
