"""/v2/ reads through Flask's test client: committed GGUF registry models as Ollama manifests, auth, and
OCI errors for bad input (never a 500)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from eldric.core.chat_templates import CHATML
from registry.server import RegistrySettings, create_registry_app
from testbed.gguf_models import write_llama_gguf

API = "/api/v1/model-registry"
V2 = "application/vnd.docker.distribution.manifest.v2+json"
QWEN_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    return write_llama_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf", chat_template=QWEN_TEMPLATE).read_bytes()


def make_client(root: Path, **settings):
    app = create_registry_app(root, RegistrySettings(min_free_bytes=0, mirror_upstream="none", **settings),
                              background=False)
    return app.test_client()


@pytest.fixture
def client(tmp_path: Path):
    return make_client(tmp_path / "store")


def upload(client, name: str, version: str, data: bytes) -> dict:
    resp = client.post(f"{API}/upload?name={name}&version={version}&filename=model.gguf", data=data)
    assert resp.status_code == 201, resp.json
    return resp.json


def test_a_registry_model_is_an_ollama_manifest(client, gguf_bytes: bytes) -> None:
    upload(client, "acme/tiny", "v1", gguf_bytes)
    resp = client.get("/v2/acme/tiny/manifests/v1", headers={"Accept": V2})
    assert resp.status_code == 200 and resp.mimetype == V2
    assert resp.headers["Docker-Content-Digest"] == sha(resp.data)
    manifest = resp.json
    layers = {layer["mediaType"]: layer for layer in manifest["layers"]}
    assert layers["application/vnd.ollama.image.model"] == {"mediaType": "application/vnd.ollama.image.model",
                                                            "digest": sha(gguf_bytes), "size": len(gguf_bytes)}
    template = client.get(f"/v2/acme/tiny/blobs/{layers['application/vnd.ollama.image.template']['digest']}")
    assert template.data.decode() == CHATML  # the GGUF's Jinja template, as the family's Go template
    params = json.loads(client.get(f"/v2/acme/tiny/blobs/{layers['application/vnd.ollama.image.params']['digest']}").data)
    assert params == {"stop": ["<|im_start|>", "<|im_end|>"]}
    config_blob = client.get(f"/v2/acme/tiny/blobs/{manifest['config']['digest']}")
    assert sha(config_blob.data) == manifest["config"]["digest"]
    config = json.loads(config_blob.data)
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert config["model_format"] == "gguf" and config["model_family"] == "llama" and config["file_type"]
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    model = client.get(f"/v2/acme/tiny/blobs/{sha(gguf_bytes)}", headers={"Range": "bytes=0-3"})
    assert model.status_code == 206 and model.data == b"GGUF"
    by_digest = client.get(f"/v2/acme/tiny/manifests/{sha(resp.data)}")
    assert by_digest.status_code == 200 and by_digest.data == resp.data


def test_names_without_namespace_are_library_and_latest_is_the_newest(client, gguf_bytes: bytes) -> None:
    upload(client, "tiny", "v1", gguf_bytes)
    upload(client, "tiny", "v2", gguf_bytes + b"")  # same bytes, another version
    assert client.get("/v2/library/tiny/tags/list").json == {"name": "library/tiny", "tags": ["latest", "v1", "v2"]}
    latest = client.get("/v2/library/tiny/manifests/latest")
    assert latest.status_code == 200
    assert "library/tiny" in client.get("/v2/_catalog").json["repositories"]


def test_a_pushed_tag_wins_over_a_registry_model_of_that_name(client, gguf_bytes: bytes) -> None:
    upload(client, "tiny", "v1", gguf_bytes)
    config = b"{}"
    loc = client.post("/v2/library/tiny/blobs/uploads/").headers["Location"]
    client.put(f"{loc}?digest={sha(config)}", data=config)
    pushed = json.dumps({"schemaVersion": 2, "mediaType": V2, "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha(config), "size": 2},
        "layers": []}).encode()
    assert client.put("/v2/library/tiny/manifests/v1", data=pushed, content_type=V2).status_code == 201
    assert client.get("/v2/library/tiny/manifests/v1").data == pushed


def test_a_deleted_registry_model_is_gone_from_v2(client, gguf_bytes: bytes) -> None:
    model = upload(client, "acme/gone", "v1", gguf_bytes)
    assert client.get("/v2/acme/gone/manifests/v1").status_code == 200
    assert client.delete(f"{API}/{model['id']}").status_code == 204
    resp = client.get("/v2/acme/gone/manifests/v1")
    assert resp.status_code == 404 and resp.json["errors"][0]["code"] == "NAME_UNKNOWN"
    assert client.head(f"/v2/acme/gone/blobs/{sha(gguf_bytes)}").status_code == 404


@pytest.mark.parametrize("path, status, code", [
    ("/v2/library/none/manifests/latest", 404, "NAME_UNKNOWN"),
    ("/v2/library/none/tags/list", 404, "NAME_UNKNOWN"),
    ("/v2/library/none/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
    ("/v2/library/none/blobs/sha256:XYZ", 400, "DIGEST_INVALID"),
    ("/v2/library/none/blobs/latest", 400, "DIGEST_INVALID"),
    ("/v2/library/none/manifests/sha256:12", 400, "DIGEST_INVALID"),
    ("/v2/library/none/manifests/-bad-tag", 400, "MANIFEST_INVALID"),
    ("/v2/Bad..Name/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/library/none/unknown/route", 404, "NAME_UNKNOWN"),
])
def test_bad_reads_answer_in_the_oci_error_format(client, path: str, status: int, code: str) -> None:
    resp = client.get(path)
    assert resp.status_code == status and resp.json["errors"][0]["code"] == code, resp.data


def test_a_known_repository_with_an_unknown_tag_is_manifest_unknown(client, gguf_bytes: bytes) -> None:
    upload(client, "acme/tiny", "v1", gguf_bytes)
    resp = client.get("/v2/acme/tiny/manifests/v9")
    assert resp.status_code == 404 and resp.json["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_an_unsatisfiable_range_is_416_in_the_oci_format(client, gguf_bytes: bytes) -> None:
    upload(client, "acme/tiny", "v1", gguf_bytes)
    resp = client.get(f"/v2/acme/tiny/blobs/{sha(gguf_bytes)}", headers={"Range": f"bytes={len(gguf_bytes) + 5}-"})
    assert resp.status_code == 416 and resp.json["errors"][0]["code"] == "RANGE_INVALID"
    assert resp.headers["Content-Range"] == f"bytes */{len(gguf_bytes)}"


def test_a_method_the_api_does_not_have_is_an_oci_error(client) -> None:
    resp = client.delete("/v2/library/x/manifests/latest")
    assert resp.status_code == 405 and resp.json["errors"][0]["code"] == "UNSUPPORTED"


@pytest.mark.parametrize("settings", [{"token": "s3cret"}, {"api_token": "s3cret"}])
def test_with_a_secret_set_v2_needs_it_as_bearer_or_basic(tmp_path: Path, settings: dict) -> None:
    client = make_client(tmp_path / "store", **settings)
    refused = client.get("/v2/")
    assert refused.status_code == 401 and refused.json["errors"][0]["code"] == "UNAUTHORIZED"
    assert refused.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert client.get("/v2/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v2/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    basic = base64.b64encode(b"eldric:s3cret").decode()
    assert client.get("/v2/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    bad_basic = base64.b64encode(b"eldric:nope").decode()
    assert client.get("/v2/_catalog", headers={"Authorization": f"Basic {bad_basic}"}).status_code == 401
    assert client.get("/v2/library/x/manifests/latest").status_code == 401  # checked before anything else
    assert client.get("/healthz").status_code == 200


def test_without_secrets_v2_is_open(client) -> None:
    resp = client.get("/v2/")
    assert resp.status_code == 200 and resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
