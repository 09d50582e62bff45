"""What an agent reports as loaded (worker_agent/loaded_models.py): Ollama's /api/ps entries under the
inventory's names, and for llama.cpp / vLLM the inventory models their /v1/models lists."""

from __future__ import annotations

from worker_agent import loaded_models
from worker_agent.installers import BackendUnavailableError

TINY = {"name": "tiny:latest", "digest": "sha256:" + "b" * 64, "size": 10, "backends": ["llamacpp", "ollama"],
        "details": {"format": "gguf", "family": "llama", "parameter_size": "1M", "quantization_level": "F16"}}


class FakeSession:
    def __init__(self, answer: dict) -> None:
        self.answer, self.asked = answer, []

    def get(self, url: str, timeout: float):
        self.asked.append(url)
        session = self

        class Answer:
            def raise_for_status(self) -> None:
                return None

            def json(self) -> dict:
                return session.answer
        return Answer()


def test_an_openai_server_lists_the_placed_file_by_path():
    ids = ["/data/nodes/a/backends/llamacpp/tiny.gguf", "/elsewhere/other.gguf"]
    [entry] = loaded_models._listed("llamacpp", ids, {"tiny:latest": TINY, "x:latest": {**TINY, "name": "x:latest"}})
    assert entry["name"] == entry["model"] == "tiny:latest" and entry["backend"] == "llamacpp"
    assert entry["backend_model"] == ids[0] and entry["expires_at"] == loaded_models.FOREVER
    assert entry["digest"] == "b" * 64 and entry["size"] == 10
    assert entry["details"]["family"] == "llama" and entry["details"]["families"] == ["llama"]


def test_ollamas_ps_entries_only_for_models_of_the_inventory():
    fake = FakeSession({"models": [{"name": "tiny:latest", "model": "tiny:latest", "size": 5, "expires_at": "2026-12-08T00:05:00Z"},
                                   {"name": "made-by-hand:latest", "model": "made-by-hand:latest"}]})
    found = loaded_models.loaded_models({"ollama": "http://o:11434"}, {"tiny:latest": TINY}, fake)
    assert fake.asked == ["http://o:11434/api/ps"]
    assert found == [{"name": "tiny:latest", "model": "tiny:latest", "size": 5, "expires_at": "2026-12-08T00:05:00Z",
                      "backend": "ollama"}]


def test_a_backend_that_cannot_be_asked_counts_as_having_nothing_loaded(monkeypatch):
    def unreachable(url: str, timeout: float):
        raise BackendUnavailableError(f"{url} unreachable")
    monkeypatch.setattr(loaded_models.openai_models, "model_ids", unreachable)
    assert loaded_models.loaded_models({"llamacpp": "http://l:8080"}, {"tiny:latest": TINY}, FakeSession({})) == []


def test_while_requests_stream_the_openai_servers_are_not_asked_and_the_last_report_stands(monkeypatch):
    def asked(url: str, timeout: float):
        raise AssertionError("llama-cpp-python's server would end the answer it is streaming")
    monkeypatch.setattr(loaded_models.openai_models, "model_ids", asked)
    last = [{"name": "tiny:latest", "backend": "llamacpp", "backend_model": "/x/tiny.gguf"},
            {"name": "gone:latest", "backend": "llamacpp"}]  # no longer in the inventory: dropped
    assert loaded_models.loaded_models({"llamacpp": "http://l:8080"}, {"tiny:latest": TINY}, FakeSession({}),
                                       keep=last) == last[:1]


def test_publish_asks_only_between_requests(monkeypatch, tmp_path):
    import fakeredis

    from eldric.cluster import inference_load, workers
    from worker_agent.settings import AgentSettings

    settings = AgentSettings.from_env({"ELDRIC_WORKER_NAME": "w1", "ELDRIC_WORKER_TYPE": "inference",
                                       "ELDRIC_BACKENDS": "llamacpp", "ELDRIC_LLAMACPP_URL": "http://l:8080",
                                       "ELDRIC_DATA_DIR": str(tmp_path)})
    store = fakeredis.FakeRedis(decode_responses=True)
    agent = type("FakeAgent", (), {"settings": settings, "redis": store, "worker_id": "w1"})()
    workers.publish_inventory(store, "w1", [TINY])
    asked = []
    monkeypatch.setattr(loaded_models.openai_models, "model_ids",
                        lambda url, timeout: asked.append(url) or ["/d/backends/llamacpp/tiny.gguf"])
    [entry] = loaded_models.publish(agent)
    assert asked == ["http://l:8080"] and entry["backend_model"] == "/d/backends/llamacpp/tiny.gguf"
    assert 0 < store.ttl("eldric:worker:w1:loaded") <= 3 * settings.heartbeat_seconds
    inference_load.begin(store, "w1")  # a routed request streams through llama.cpp now
    assert loaded_models.publish(agent) == [entry] and len(asked) == 1
