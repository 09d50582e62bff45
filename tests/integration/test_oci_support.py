"""The test-support registry and GGUF writer behave like the real things."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import pytest
import requests

from testbed.gguf_models import DEFAULT_CHAT_TEMPLATE, write_llama_gguf
from testbed.oci_registry import (
    MANIFEST_V2,
    MT_MODEL,
    MT_PARAMS,
    OCIRegistry,
    corrupt_blob,
    delete_manifest,
    get_manifest,
    push_ollama_model,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path: Path):
    with OCIRegistry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def http():
    with requests.Session() as s:
        s.trust_env = False  # loopback only, whatever HTTP(S)_PROXY says
        yield s


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_llama_gguf(tmp_path / "tiny.gguf", n_layers=3)


def test_gguf_reads_back_as_llama(model: Path) -> None:
    reader = gguf.GGUFReader(model)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.block_count"].contents() == 3
    assert reader.fields["tokenizer.chat_template"].contents() == DEFAULT_CHAT_TEMPLATE
    names = {t.name for t in reader.tensors}
    assert len(names) == 2 + 1 + 3 * 9  # token_embd, output_norm, output + 9 per block
    assert {"token_embd.weight", "blk.2.ffn_down.weight", "output.weight"} <= names
    # Same arguments, same bytes: digests of test models are stable.
    again = write_llama_gguf(model.with_name("again.gguf"), n_layers=3)
    assert again.read_bytes() == model.read_bytes()


def test_pushed_manifest_and_ranged_blob(registry: OCIRegistry, model: Path, http: requests.Session) -> None:
    pushed = push_ollama_model(registry.url, "library/tiny", "latest", gguf_path=model)

    r = get_manifest(registry.url, "library/tiny", "latest")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == MANIFEST_V2
    assert r.content == pushed["manifest_bytes"]
    assert r.headers["Docker-Content-Digest"] == pushed["manifest_digest"]
    assert json.loads(r.content)["layers"][0]["mediaType"] == MT_MODEL
    config = json.loads(http.get(
        f"{registry.url}/v2/library/tiny/blobs/{pushed['config_digest']}", timeout=10).content)
    assert config["model_format"] == "gguf" and config["file_type"] == "F16"

    data = model.read_bytes()
    blob_url = f"{registry.url}/v2/library/tiny/blobs/{pushed['layers'][MT_MODEL]}"
    r = http.get(blob_url, headers={"Range": "bytes=1000-4095"}, timeout=10)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes 1000-4095/{len(data)}"
    assert r.content == data[1000:4096]
    params = http.get(f"{registry.url}/v2/library/tiny/blobs/{pushed['layers'][MT_PARAMS]}", timeout=10)
    assert params.json() == {"stop": ["<|im_end|>"]}


def test_corrupt_blob_and_delete_manifest(registry: OCIRegistry, model: Path,
                                          http: requests.Session) -> None:
    pushed = push_ollama_model(registry.url, "library/tiny", "v1", gguf_path=model, license=None)
    assert set(pushed["layers"]) == {MT_MODEL, "application/vnd.ollama.image.template",
                                     "application/vnd.ollama.image.system", MT_PARAMS}
    digest = pushed["layers"][MT_MODEL]
    corrupt_blob(registry.root, digest)
    body = http.get(f"{registry.url}/v2/library/tiny/blobs/{digest}", timeout=10).content
    assert len(body) == model.stat().st_size
    assert "sha256:" + hashlib.sha256(body).hexdigest() != digest

    assert delete_manifest(registry.url, "library/tiny", "v1") == pushed["manifest_digest"]
    assert get_manifest(registry.url, "library/tiny", "v1").status_code == 404
