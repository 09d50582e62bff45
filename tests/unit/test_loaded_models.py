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
