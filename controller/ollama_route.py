"""Inference routed to a worker that serves the model: Ollama's and OpenAI's endpoints, and `/api/ps` (issue 23).

Each request goes to the agent of a worker chosen by controller.routing (loaded there first, then
the least busy; never one that lacks the model), on its `/inference/<backend>/<endpoint>`
(worker_agent/inference_proxy.py), and the answer streams back as it arrives: Ollama's NDJSON,
OpenAI's SSE, or one JSON body. A worker that fails before the first byte (unreachable, 5xx,
no longer has the model) is counted as an error and the next one is tried; once bytes flowed, a
broken stream ends with an error line (Ollama) or event (OpenAI) and the client decides.
`X-Eldric-Worker` names the worker that answered. An unload (`keep_alive: 0` with nothing to
generate) goes to every worker where the model is loaded. `/api/ps` is the agents' reports of
what their backends have loaded (worker_agent/loaded_models.py), merged by model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime

import redis
import requests
from flask import Blueprint, Response, current_app, jsonify, request

from controller import routing
from controller.models import cluster_models
from controller.state import inventory_cache, redis_client
from eldric.cluster import inference_load, workers
from eldric.cluster.queues import is_model_serving
from eldric.core.unload import is_unload
from eldric.transfer.http import http_session
from eldric.web.auth import has_token

bp = Blueprint("ollama_route", __name__)

OLLAMA_ENDPOINTS = ("api/chat", "api/generate", "api/embed", "api/embeddings")
OPENAI_ENDPOINTS = ("v1/chat/completions", "v1/completions", "v1/embeddings")
CONNECT_SECONDS = 3.0  # an agent that does not accept the connection by then is skipped for the next
READ_SECONDS = 600.0  # longest silence inside an answer (a slow first token on a cold model included)


class NoWorkerError(Exception):
    """Every candidate failed before its first byte; the message says how each did."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


def _session() -> requests.Session:
    """One pooled session per app (keep-alive connections to the agents), with the cluster secret."""
    found = current_app.extensions.get("eldric.route_session")
    if found is None:
        adapter = requests.adapters.HTTPAdapter(pool_connections=64, pool_maxsize=256)
        found = http_session(token=str(current_app.config.get("CLUSTER_SECRET") or ""))
        found.mount("http://", adapter)
        found.mount("https://", adapter)
        current_app.extensions["eldric.route_session"] = found
    return found


def _holder_cache() -> routing.HolderCache:
    cache = current_app.extensions.get("eldric.route_holders")
    if cache is None or cache.source is not redis_client():  # tests swap the Redis client
        cache = current_app.extensions["eldric.route_holders"] = routing.HolderCache(source=redis_client())
    return cache


def _is_openai(endpoint: str) -> bool:
    return endpoint.startswith("v1/")


def _fail(endpoint: str, message: str, status: int, code: str | None = None):
    """Ollama's `{"error": "..."}`, or OpenAI's error object on /v1."""
    if _is_openai(endpoint):
        kind = "invalid_request_error" if status < 500 else "api_error"
        return jsonify(error={"message": message, "type": kind, "param": None, "code": code}), status
    return jsonify(error=message), status


@bp.before_request
def _openai_needs_the_token():
    # The app's bearer check covers /api/...; OpenAI's /v1 paths answer in OpenAI's shape.
    token = str(current_app.config.get("API_TOKEN") or "")
    if token and request.path.startswith("/v1/") and not has_token(request.headers.get("Authorization"), token):
        return _fail("v1/", "missing or wrong bearer token (Authorization: Bearer <ELDRIC_API_TOKEN>)", 401,
                     "invalid_api_key")
    return None


@bp.errorhandler(redis.RedisError)
def _redis_down(exc: redis.RedisError):
    return _fail(request.path.lstrip("/"), f"cluster state store (Redis) unavailable: {exc}", 503)


def _route_view(endpoint: str):
    def view():
        return route(endpoint)
    view.__name__ = endpoint.replace("/", "_")
    return view


for _endpoint in OLLAMA_ENDPOINTS + OPENAI_ENDPOINTS:
    bp.add_url_rule(f"/{_endpoint}", view_func=_route_view(_endpoint), methods=["POST"])


def _body(endpoint: str) -> tuple[bytes, dict] | tuple:
    raw = request.get_data()
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        return _fail(endpoint, "request body must be JSON", 400)
    if not isinstance(body, dict):
        return _fail(endpoint, "request body must be a JSON object", 400)
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model:
        return _fail(endpoint, "model is required", 400)
    return raw, {**body, "model": model}


def route(endpoint: str):
    parsed = _body(endpoint)
    if not isinstance(parsed[1], dict):
        return parsed
    raw, body = parsed
    client = redis_client()
    if not _is_openai(endpoint) and is_unload(endpoint, body):
        return unload(client, endpoint, raw, body)
    name, found = routing.candidates(client, body["model"], _holder_cache())
    if not found:
        return _fail(endpoint, f"model '{body['model']}' not found", 404, "model_not_found")
    try:
        worker, resp, request_id = _first_answer(client, routing.rank(found), endpoint, name, raw, body["model"])
    except NoWorkerError as exc:
        return _fail(endpoint, str(exc), exc.status)
    if resp.status_code >= 400:  # the backend refused the request itself: the same everywhere, say so
        message = _agent_error(resp)
        inference_load.end(client, worker.worker, request_id)
        answer = _fail(endpoint, message, resp.status_code)
        answer[0].headers["X-Eldric-Worker"] = worker.worker
        return answer
    out = Response(_relay(client, worker.worker, request_id, resp, endpoint),
                   status=resp.status_code, content_type=resp.headers.get("Content-Type", "application/json"))
    out.headers["X-Eldric-Worker"] = worker.worker
    out.headers["X-Accel-Buffering"] = "no"  # a reverse proxy in front must not buffer the stream either
    return out


def _first_answer(client: redis.Redis, ranked: list[routing.Candidate], endpoint: str, name: str, raw: bytes,
                  asked: str):
    """Try the workers in order until one answers with headers that are not its own failure."""
    errors = []
    not_found = 0
    for cand in ranked:
        request_id = inference_load.begin(client, cand.worker)
        params = {"model": name, **({"backend_model": cand.backend_model} if cand.backend_model else {})}
        try:
            resp = _session().post(f"{cand.address}/inference/{cand.backend}/{endpoint}", params=params,
                                   data=raw, headers={"Content-Type": "application/json"}, stream=True,
                                   timeout=(CONNECT_SECONDS, READ_SECONDS))
        except requests.RequestException as exc:
            inference_load.end(client, cand.worker, request_id, failed=True, before_first_byte=True)
            errors.append(f"{cand.worker}: {type(exc).__name__}")
            continue
        if resp.status_code >= 500 or resp.status_code in (401, 404):  # its failure, not the request's
            message = _agent_error(resp)
            inference_load.end(client, cand.worker, request_id, failed=resp.status_code != 404,
                               before_first_byte=True)
            not_found += resp.status_code == 404
            errors.append(f"{cand.worker}: {message}")
            continue
        return cand, resp, request_id
    if not_found == len(ranked):  # inventories were stale: nobody has it after all
        raise NoWorkerError(f"model '{asked}' not found", 404)
    raise NoWorkerError(f"no worker could answer for '{name}' ({'; '.join(errors)})")


def _agent_error(resp: requests.Response) -> str:
    try:
        raw = resp.content
    finally:
        resp.close()
    try:
        body = json.loads(raw)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            err = err.get("message")
        return str(err or body)
    except ValueError:
        return raw.decode("utf-8", "replace")[:300] or f"HTTP {resp.status_code}"


def _relay(client: redis.Redis, worker: str, request_id: str, resp: requests.Response,
           endpoint: str) -> Iterator[bytes]:
    """The agent's bytes as they come; a break after the first byte ends the stream with an error."""
    failed = False
    try:
        yield from resp.iter_content(chunk_size=None)
    except requests.RequestException as exc:
        failed = True
        message = f"worker {worker} broke off the answer: {type(exc).__name__}"
        if "event-stream" in resp.headers.get("Content-Type", ""):
            yield f"data: {json.dumps({'error': {'message': message, 'type': 'api_error'}})}\n\n".encode()
        elif "ndjson" in resp.headers.get("Content-Type", ""):
            yield (json.dumps({"error": message}) + "\n").encode()
    finally:
        resp.close()
        inference_load.end(client, worker, request_id, failed=failed)


def unload(client: redis.Redis, endpoint: str, raw: bytes, body: dict):
    """`keep_alive: 0`: to every worker where a backend has the model loaded; each one's answer under `workers`."""
    name, found = routing.candidates(client, body["model"])
    if not found:
        return _fail(endpoint, f"model '{body['model']}' not found", 404)
    reached: dict[str, dict] = {}
    for cand in [c for c in found if c.loaded]:
        try:
            params = {"model": name, **({"backend_model": cand.backend_model} if cand.backend_model else {})}
            resp = _session().post(f"{cand.address}/inference/{cand.backend}/{endpoint}", params=params,
                                   data=raw, headers={"Content-Type": "application/json"},
                                   timeout=(CONNECT_SECONDS, 60))
            answer = _last_json(resp.content)
            reached[cand.worker] = {"status": resp.status_code, "backend": cand.backend,
                                    "unloaded": resp.ok and answer.get("unloaded", True) is not False,
                                    **({"reason": answer["reason"]} if answer.get("reason") else {}),
                                    **({"error": answer["error"]} if answer.get("error") else {})}
        except requests.RequestException as exc:
            reached[cand.worker] = {"status": 502, "backend": cand.backend, "unloaded": False, "error": str(exc)}
    out = {"model": body["model"], "created_at": datetime.now().astimezone().isoformat(), "done": True,
           "done_reason": "unload", "workers": reached}
    out.update({"message": {"role": "assistant", "content": ""}} if endpoint == "api/chat" else {"response": ""})
    resp = Response(json.dumps(out) + "\n", content_type="application/json")
    resp.headers["X-Eldric-Worker"] = ",".join(sorted(reached))
    return resp


def _last_json(raw: bytes) -> dict:
    """The last JSON line of an answer (Ollama may stream even an unload)."""
    for line in reversed(raw.splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    return {}


@bp.get("/v1/models")
def openai_models():
    """The models some backend of the cluster serves, in OpenAI's list shape."""
    models, _eligible = cluster_models(redis_client(), cache=inventory_cache(),
                                       forget_after=current_app.config["WORKER_FORGET_SECONDS"])
    data = [{"id": m["name"], "object": "model", "created": int(m.get("modified_at") or 0), "owned_by": "eldric"}
            for m in models if m.get("workers")]
    return jsonify(object="list", data=data)


@bp.get("/api/ps")
def ps():
    return jsonify(models=running_models(redis_client()))


def running_models(client: redis.Redis) -> list[dict]:
    """Ollama's ProcessModelResponse per loaded model, merged over the online workers' reports: the
    latest `expires_at`, and (ours, beside Ollama's keys) `workers` and each one's `backends`."""
    online = workers.online_ids(client)
    serving = [w for w, t in workers.types(client, online).items() if is_model_serving(t or "")]
    merged: dict[str, dict] = {}
    for wid, entries in workers.loaded(client, serving).items():
        for entry in entries:
            name = entry["name"]
            model = merged.get(name)
            if model is None:
                model = merged[name] = {k: v for k, v in entry.items() if k not in ("backend", "backend_model")}
                model.update(workers=[], backends={})
            elif _later(entry.get("expires_at"), model.get("expires_at")):
                model["expires_at"] = entry["expires_at"]
            if wid not in model["workers"]:
                model["workers"].append(wid)
            model["backends"].setdefault(wid, []).append(entry.get("backend"))
    for model in merged.values():
        model["workers"].sort()
        model.setdefault("context_length", 0)
        model.setdefault("size_vram", 0)
    return [merged[n] for n in sorted(merged)]


_FRACTION = re.compile(r"(\.\d{6})\d+")  # Go writes nanoseconds; Python reads at most microseconds


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        found = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
    except ValueError:
        return None
    return found if found.tzinfo else found.astimezone()


def _later(a: object, b: object) -> bool:
    """Is instant `a` after `b` (an unreadable or missing one is never later)."""
    first, second = _instant(a), _instant(b)
    return first is not None and (second is None or first > second)
