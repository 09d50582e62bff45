"""A worker's part of Ollama's copy (worker_agent/copying.py): the destination gets the source's manifest bytes
and its own llama.cpp file (a hard link, no bytes copied); a copy that fails leaves no destination anywhere."""

from __future__ import annotations

import os

import pytest

from eldric.core.digests import Digest
from eldric.core.names import ModelName
from eldric.transfer.errors import InsufficientSpaceError
from tests.unit.test_pull_installs_undone import Node, full_disk, model_blobs, pulled, source_of
from tests.unit.test_pulling import client, progress  # noqa: F401
from worker_agent.copying import CopyError, copy_model

ALIAS = ModelName.parse("tiny-alias")


def llamacpp(tmp_path, slug: str):
    return tmp_path / "backends" / "llamacpp" / f"{slug}.gguf"


@pytest.fixture
def node(tmp_path, progress):  # noqa: F811
    node = Node(tmp_path)
    pulled(node, source_of(model_blobs(tmp_path, "one")), progress)
    return node


def test_the_copy_is_the_same_manifest_and_a_link_for_llamacpp(tmp_path, node, progress):  # noqa: F811
    result = copy_model(node, "tiny", "tiny-alias", progress)
    source_raw = node.store.manifest_path(ModelName.parse("tiny")).read_bytes()
    assert node.store.manifest_path(ALIAS).read_bytes() == source_raw
    assert os.path.samefile(llamacpp(tmp_path, "tiny-alias"), llamacpp(tmp_path, "tiny"))
    assert result["destination"] == "tiny-alias:latest" and result["digest"].startswith("sha256:")
    assert progress.record["state"] == "completed" and progress.record["transferred"] == 0
    assert {m["name"] for m in node.store.list_models()} == {"tiny:latest", "tiny-alias:latest"}


def test_a_copy_whose_manifest_fails_leaves_no_destination(tmp_path, node, progress, monkeypatch):  # noqa: F811
    monkeypatch.setattr(node.store, "write_manifest", full_disk)
    with pytest.raises(InsufficientSpaceError):
        copy_model(node, "tiny", "tiny-alias", progress)
    assert not llamacpp(tmp_path, "tiny-alias").exists() and not node.store.manifest_path(ALIAS).exists()
    assert llamacpp(tmp_path, "tiny").exists()  # the source is untouched


def test_a_source_this_node_lacks_is_refused(node, progress):  # noqa: F811
    with pytest.raises(CopyError, match="not in this worker's store"):
        copy_model(node, "nosuch", "x", progress)


def test_deleting_the_copy_keeps_the_sources_blobs(tmp_path, node, progress):  # noqa: F811
    copy_model(node, "tiny", "tiny-alias", progress)
    node.store.delete_model(ALIAS)
    source = node.store.read_manifest(ModelName.parse("tiny"))[1]
    assert all(node.store.blobs.has(Digest.parse(str(b.digest))) for b in source.blobs())
