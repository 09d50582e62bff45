"""The agent's inference endpoint (worker_agent/inference_proxy.py) over Flask's test client, with a
hand-written stand-in for the HTTP session to the node's backends: what reaches the backend, what comes back."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest
import requests
from flask import Flask

from worker_agent import inference_proxy
from worker_agent.settings import AgentSettings


class Answer:
    def __init__(self, status: int, chunks: list[bytes], content_type: str) -> None:
        self.status_code, self.chunks = status, chunks
        self.headers = {"Content-Type": content_type}

    @property
    def content(self) -> bytes:
        return b"".join(self.chunks)

    def json(self):
        return json.loads(self.content)

    def iter_content(self, chunk_size=None):
        yield from self.chunks

    def close(self) -> None:
        pass


class Backends:
    def __init__(self, answer) -> None:
        self.answer, self.sent = answer, []

    def post(self, url: str, json=None, **kw):
        self.sent.append((url, json))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def app_with(tmp_path, answer, backends: str = "ollama,llamacpp") -> tuple[Flask, Backends]:
    settings = AgentSettings.from_env({"ELDRIC_WORKER_NAME": "w1", "ELDRIC_WORKER_TYPE": "inference",
                                       "ELDRIC_BACKENDS": backends, "ELDRIC_LLAMACPP_URL": "http://llama:8080",
                                       "ELDRIC_OLLAMA_URL": "http://ollama:11434", "ELDRIC_DATA_DIR": str(tmp_path)})
    agent = type("FakeAgent", (), {"settings": settings, "worker_id": "w1",
                                   "redis": fakeredis.FakeRedis(decode_responses=True)})()
    fake = Backends(answer)
    app = Flask("agent")
    app.register_blueprint(inference_proxy.blueprint(agent, session=fake))
    app.agent = agent
    return app, fake


def test_ollama_gets_the_request_as_is_with_the_inventory_name_and_its_stream_comes_back(tmp_path):
    app, fake = app_with(tmp_path, Answer(200, [b'{"done":false}\n', b'{"done":true}\n'], "application/x-ndjson"))
    resp = app.test_client().post("/inference/ollama/api/chat?model=tiny:latest",
                                  json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200 and resp.data == b'{"done":false}\n{"done":true}\n'
    assert resp.content_type == "application/x-ndjson"
    assert fake.sent == [("http://ollama:11434/api/chat",
                          {"model": "tiny:latest", "messages": [{"role": "user", "content": "hi"}]})]
    # the relay's record of the model's last use (eviction's LRU): under the inventory name, about now
    served = app.agent.redis.hgetall("eldric:worker:w1:served")
    assert list(served) == ["tiny:latest"] and abs(float(served["tiny:latest"]) - time.time()) < 60


def test_llamacpp_gets_openais_request_under_its_id_and_the_answer_is_ollamas_ndjson(tmp_path):
    sse = (b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
           b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'
           b'data: {"choices": [{"delta": {}, "finish_reason": "length"}]}\n\ndata: [DONE]\n\n')
    app, fake = app_with(tmp_path, Answer(200, [sse], "text/event-stream"))
    resp = app.test_client().post("/inference/llamacpp/api/chat?model=tiny:latest&backend_model=/m/tiny.gguf",
                                  json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                        "options": {"num_predict": 3}})
    lines = [json.loads(x) for x in resp.data.splitlines()]
    assert resp.content_type == "application/x-ndjson"
    assert lines[0]["message"] == {"role": "assistant", "content": "Hi"} and lines[0]["model"] == "tiny"
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "length"
    url, sent = fake.sent[0]
    assert url == "http://llama:8080/v1/chat/completions"
    assert sent["model"] == "/m/tiny.gguf" and sent["max_tokens"] == 3 and sent["stream"] is True


def test_an_unload_on_llamacpp_is_answered_without_asking_the_server(tmp_path, monkeypatch):
    monkeypatch.setattr(inference_proxy, "_report_soon", lambda agent: None)
    app, fake = app_with(tmp_path, AssertionError("not to be called"))
    resp = app.test_client().post("/inference/llamacpp/api/generate?model=tiny:latest&backend_model=/m/tiny.gguf",
                                  json={"model": "tiny", "keep_alive": 0, "prompt": ""})
    assert resp.json["done_reason"] == "unload" and resp.json["unloaded"] is False and fake.sent == []


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/inference/vllm/api/chat", 404, "backend 'vllm' does not serve inference on worker w1"),
    ("/inference/ollama/api/pull", 404, "no inference endpoint /api/pull"),
])
def test_what_the_agent_refuses(tmp_path, path, status, message):
    app, _ = app_with(tmp_path, AssertionError("not to be called"))
    resp = app.test_client().post(path, json={"model": "tiny"})
    assert resp.status_code == status and resp.json == {"error": message}


def test_an_unreachable_backend_is_a_502_and_a_refusal_keeps_its_status_in_ollamas_shape(tmp_path):
    app, _ = app_with(tmp_path, requests.ConnectionError("refused"))
    resp = app.test_client().post("/inference/ollama/api/chat?model=tiny:latest", json={"model": "tiny"})
    assert resp.status_code == 502 and resp.json["error"].startswith("ollama at http://ollama:11434/api/chat unreachable")
    app, _ = app_with(tmp_path, Answer(400, [b'{"error": {"message": "max_tokens too big"}}'], "application/json"))
    resp = app.test_client().post("/inference/llamacpp/v1/completions?model=t&backend_model=/m/t.gguf", json={"model": "t"})
    assert resp.status_code == 400 and resp.json == {"error": "max_tokens too big"}


def test_a_backend_with_no_server_url_says_which_setting_is_missing(tmp_path):
    """Files placed for llama.cpp but no ELDRIC_LLAMACPP_URL: 503 naming it (the controller tries another
    worker and, when none answers, says why), not 404, which would read as 'model not found'."""
    settings = AgentSettings.from_env({"ELDRIC_WORKER_NAME": "w1", "ELDRIC_WORKER_TYPE": "inference",
                                       "ELDRIC_BACKENDS": "llamacpp,vllm", "ELDRIC_DATA_DIR": str(tmp_path)})
    agent = type("FakeAgent", (), {"settings": settings, "worker_id": "w1",
                                   "redis": fakeredis.FakeRedis(decode_responses=True)})()
    app = Flask("agent")
    app.register_blueprint(inference_proxy.blueprint(agent, session=Backends(None)))
    resp = app.test_client().post("/inference/llamacpp/api/chat?model=tiny:latest", json={"model": "tiny"})
    assert resp.status_code == 503 and "ELDRIC_LLAMACPP_URL" in resp.json["error"]
    assert app.test_client().post("/inference/tgi/api/chat?model=tiny", json={}).status_code == 404
