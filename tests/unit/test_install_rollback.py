"""All or nothing per worker (worker_agent/installing.py): a backend that refuses undoes the others' installs."""

from __future__ import annotations

import json

import fakeredis
import numpy as np
import pytest
from safetensors.numpy import save_file

from eldric.core.digests import Digest
from worker_agent import serving
from worker_agent.catalog import Catalog
from worker_agent.installers import MissingFilesError
from worker_agent.installing import install_and_list, install_entry, placement_summary
from worker_agent.ollama_store import OllamaStore
from worker_agent.runtime import Agent
from worker_agent.settings import AgentSettings


def make_agent(tmp_path, backends: str) -> Agent:
    settings = AgentSettings.from_env({"ELDRIC_BACKENDS": backends}, worker_id="w", worker_type="inference",
                                      data_dir=tmp_path)
    store = OllamaStore(tmp_path / "models")
    store.ensure()
    return Agent(settings=settings, redis=fakeredis.FakeRedis(decode_responses=True), store=store,
                 catalog=Catalog(tmp_path / "catalog"))


def st_entry(agent: Agent, tmp_path, name: str, *, tokenizer: bool, fill: float = 1.0) -> dict:
    """A safetensors model whose files are in the agent's blob store, as a distribution leaves them."""
    weights = tmp_path / f"w-{fill}.safetensors"
    save_file({"w": np.full((4, 4), fill, dtype=np.float16)}, str(weights))
    files = {"model.safetensors": weights.read_bytes(),
             "config.json": json.dumps({"architectures": ["LlamaForCausalLM"]}).encode()}
    if tokenizer:
        files["tokenizer.json"] = b'{"version": "1.0"}'
    listed = []
    for path, data in files.items():
        digest = agent.store.blobs.put_bytes(data)
        listed.append({"path": path, "sha256": str(digest), "size": len(data)})
    return {"name": name, "format": "safetensors", "files": listed}


def plan_of(agent: Agent, entry: dict) -> serving.BackendPlan:
    return serving.plan_files(agent.settings, entry["name"], entry["format"], [f["path"] for f in entry["files"]])


def backend_dir(tmp_path, backend: str):
    return tmp_path / "backends" / backend


def test_a_backend_refusing_the_model_removes_what_the_others_got(tmp_path):
    agent = make_agent(tmp_path, "vllm,tgi")
    entry = st_entry(agent, tmp_path, "acme/st-notok:v1", tokenizer=False)
    with pytest.raises(MissingFilesError) as err:
        install_and_list(agent, entry, plan_of(agent, entry))
    assert str(err.value).startswith("tgi: ") and "tokenizer" in str(err.value)
    assert "rolled back its install in vllm" in str(err.value)
    assert list(backend_dir(tmp_path, "vllm").iterdir()) == []  # not even a staging directory
    assert agent.catalog.entries() == []


def test_a_format_mismatch_only_skips_that_backend_and_says_why(tmp_path):
    agent = make_agent(tmp_path, "llamacpp,vllm")
    entry = st_entry(agent, tmp_path, "acme/st-ok:v1", tokenizer=True)
    plan = plan_of(agent, entry)
    listed = install_and_list(agent, entry, plan)
    assert list(listed["installed"]) == ["vllm"] and agent.catalog.get("acme/st-ok:v1") is not None
    summary = placement_summary(listed["installed"], plan.skipped, plan.order)
    assert summary.startswith("installed for llamacpp: skipped (llama.cpp serves GGUF files; this model is safetensors)")
    assert "vllm: hard-linked, no copy" in summary


def test_a_failed_reinstall_gives_the_backends_the_version_the_catalog_lists(tmp_path):
    agent = make_agent(tmp_path, "vllm,tgi")
    first = st_entry(agent, tmp_path, "acme/m:v1", tokenizer=True, fill=1.0)
    old = install_and_list(agent, first, plan_of(agent, first))
    installed = backend_dir(tmp_path, "vllm") / "acme--m--v1" / "model.safetensors"
    before = installed.read_bytes()
    new = st_entry(agent, tmp_path, "acme/m:v1", tokenizer=False, fill=2.0)  # new weights, and TGI will refuse
    with pytest.raises(MissingFilesError):
        install_entry(agent, new, plan_of(agent, new))
    assert installed.read_bytes() == before  # vLLM serves the catalog's version again, not the refused one
    assert (backend_dir(tmp_path, "tgi") / "acme--m--v1" / "tokenizer.json").is_file()
    assert agent.catalog.get("acme/m:v1")["files"] == old["files"]


def test_a_catalog_that_cannot_take_the_entry_rolls_the_installs_back(tmp_path):
    agent = make_agent(tmp_path, "vllm")
    entry = st_entry(agent, tmp_path, "acme/full:v1", tokenizer=True)

    class FullCatalog(Catalog):
        def put(self, entry: dict):
            raise OSError(28, "No space left on device")

    agent.catalog = FullCatalog(tmp_path / "catalog")
    with pytest.raises(OSError):
        install_and_list(agent, entry, plan_of(agent, entry))
    assert not (backend_dir(tmp_path, "vllm") / "acme--full--v1").exists()
    # the blobs stay: the store keeps verified bytes for a retry; only the backends' names went
    assert all(agent.store.blobs.has(Digest.parse(f["sha256"]), f["size"]) for f in entry["files"])
