"""`show`'s Modelfile names its weights by absolute path (issue 22, finding 6): an agent started with a
relative --data-dir answered `FROM data/ollama/models/blobs/sha256-…`, which names nothing where the
Modelfile is used (`ollama create -f`, another shell)."""

from __future__ import annotations

import os
from pathlib import Path

from eldric.core.digests import Digest
from testbed.gguf_models import write_llama_gguf
from tests.unit.test_pulling import BLOBS, MODEL_BLOB, NAME, RAW
from worker_agent.model_info import show_file_model, show_model
from worker_agent.ollama_store import OllamaStore


def _from_lines(modelfile: str) -> list[str]:
    return [line.removeprefix("FROM ") for line in modelfile.splitlines() if line.startswith("FROM ")]


def test_an_ollama_models_from_is_absolute_with_a_relative_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = OllamaStore(Path("data") / "models")  # relative, as `--data-dir data` makes it
    store.ensure()
    for data in BLOBS.values():
        store.blobs.put_bytes(data)
    store.write_manifest(NAME, RAW)
    shown = show_model(store, NAME)
    [path] = _from_lines(shown["modelfile"])
    assert os.path.isabs(path), shown["modelfile"]
    assert Path(path).name == Digest.of_bytes(MODEL_BLOB).filename and Path(path).is_file()
    assert Path(path).resolve().is_relative_to(tmp_path.resolve() / "data" / "models")


def test_a_file_models_from_is_absolute_with_relative_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gguf = write_llama_gguf(tmp_path / "m.gguf", name="m")
    entry = {"name": "house:v1", "format": "gguf",
             "files": [{"path": "m.gguf", "sha256": str(Digest.of_bytes(gguf.read_bytes()))}]}
    shown = show_file_model(entry, {"m.gguf": Path("m.gguf")})
    [path] = _from_lines(shown["modelfile"])
    assert os.path.isabs(path) and Path(path).resolve() == gguf.resolve(), shown["modelfile"]
