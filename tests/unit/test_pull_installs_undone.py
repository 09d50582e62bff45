"""A pull whose manifest cannot be written leaves its file backends as the store lists them (issue 22,
all or nothing): the earlier version of a re-pull goes back into llama.cpp, a first pull leaves nothing."""

from __future__ import annotations

import errno
import os

import pytest

from eldric.core.digests import Digest
from eldric.transfer.errors import InsufficientSpaceError
from worker_agent.catalog import Catalog
from worker_agent.pulling import BackendInstalls, pull_model
from worker_agent.settings import AgentSettings
from testbed.gguf_models import write_llama_gguf
from tests.unit.test_pulling import BLOBS, NAME, OPTIONS, FakeSource, manifest_bytes, progress, client  # noqa: F401


def model_blobs(tmp_path, name: str) -> dict[str, bytes]:
    """The test model's blobs with a real GGUF (llama.cpp's installer reads its header)."""
    return {**BLOBS, "model": write_llama_gguf(tmp_path / f"{name}.gguf", name=name).read_bytes()}


def source_of(blobs: dict[str, bytes]) -> FakeSource:
    return FakeSource(manifest_bytes(blobs), {Digest.of_bytes(d): d for d in blobs.values()})


class Node:
    def __init__(self, tmp_path) -> None:
        self.settings = AgentSettings.from_env({"ELDRIC_WORKER_NAME": "gpu1", "ELDRIC_WORKER_TYPE": "inference",
                                                "ELDRIC_DATA_DIR": str(tmp_path), "ELDRIC_BACKENDS": "llamacpp"})
        from worker_agent.ollama_store import OllamaStore
        self.store = OllamaStore(tmp_path / "models")
        self.catalog = Catalog(tmp_path / "catalog")


def pulled(node, source, progress) -> None:  # noqa: F811
    pull_model(NAME, store=node.store, source=source, progress=progress, options=OPTIONS,
               reserve=0, backends=BackendInstalls(node, NAME, progress))


def full_disk(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def gguf(tmp_path):
    return tmp_path / "backends" / "llamacpp" / "tiny.gguf"


def test_a_first_pull_whose_manifest_fails_leaves_no_file_in_llamacpp(tmp_path, progress, monkeypatch):  # noqa: F811
    node = Node(tmp_path)
    monkeypatch.setattr(node.store, "write_manifest", full_disk)
    with pytest.raises(InsufficientSpaceError):
        pulled(node, source_of(model_blobs(tmp_path, "one")), progress)
    assert not gguf(tmp_path).exists()


def test_a_repull_whose_manifest_fails_puts_the_listed_version_back(tmp_path, progress, monkeypatch):  # noqa: F811
    node = Node(tmp_path)
    pulled(node, source_of(model_blobs(tmp_path, "old")), progress)
    old = model_blobs(tmp_path, "old")["model"]
    assert gguf(tmp_path).read_bytes() == old
    monkeypatch.setattr(node.store, "write_manifest", full_disk)
    with pytest.raises(InsufficientSpaceError):
        pulled(node, source_of(model_blobs(tmp_path, "new")), progress)
    assert gguf(tmp_path).read_bytes() == old  # what Ollama's store lists, llama.cpp serves
    assert os.path.samefile(gguf(tmp_path), node.store.blobs.path(Digest.of_bytes(old)))


def test_a_repull_refused_by_one_backend_leaves_the_other_with_the_listed_version(tmp_path, progress, monkeypatch):  # noqa: F811
    from worker_agent import installers
    from worker_agent.installers import InstallError

    node = Node(tmp_path)
    node.settings = node.settings.model_copy(update={"backends": ("llamacpp", "vllm")})
    pulled(node, source_of(model_blobs(tmp_path, "old")), progress)
    old = model_blobs(tmp_path, "old")["model"]
    real_install = installers.install

    def vllm_refuses(model, config, **kw):
        if config.backend == "vllm":
            raise InstallError("vllm refused it")
        return real_install(model, config, **kw)
    monkeypatch.setattr(installers, "install", vllm_refuses)
    with pytest.raises(InstallError):
        pulled(node, source_of(model_blobs(tmp_path, "new")), progress)
    assert gguf(tmp_path).read_bytes() == old  # llama.cpp was given the new GGUF, then the listed one again
