"""`eldric registry` as a real process: uploads (whole, resumed, concurrent), downloads with Range,
delete with shared blobs, restart mid-upload, and bad input over real sockets."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import pytest
import requests
from safetensors.numpy import save_file

from eldric.client.registry import ModelRegistryClient
from testbed.gguf_models import write_llama_gguf
from testbed.processes import session, start_registry, wait_until

pytestmark = pytest.mark.integration
API = "/api/v1/model-registry"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("registry-http")


@pytest.fixture(scope="module")
def registry(root: Path):
    svc, url = start_registry(root, "main", "--max-file-size", "4M")
    yield url
    svc.stop()


@pytest.fixture(scope="module")
def http() -> requests.Session:
    return session()


@pytest.fixture(scope="module")
def gguf(root: Path) -> Path:
    return write_llama_gguf(root / "tiny.gguf", n_layers=3)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload(http, registry: str, name: str, data: bytes, **params) -> requests.Response:
    return http.post(f"{registry}{API}/upload", params={"name": name, "filename": "model.gguf", **params},
                     data=data, timeout=30)


def count(http, registry: str, **params) -> int:
    return http.get(f"{registry}{API}", params=params, timeout=10).json()["total"]


def test_gguf_upload_list_get_and_ranged_download(http, registry: str, gguf: Path) -> None:
    data = gguf.read_bytes()
    with open(gguf, "rb") as f:  # streamed from the file object
        resp = http.post(f"{registry}{API}/upload", params={"name": "tiny", "filename": "tiny.gguf",
                                                            "digest": sha(data)}, data=f, timeout=30)
    assert resp.status_code == 201, resp.text
    model = resp.json()
    assert model["details"]["architecture"] == "llama" and model["details"]["context_length"] == 2048
    assert model["files"] == [{"path": "tiny.gguf", "size": len(data), "sha256": sha(data),
                               "location": f"blobs/sha256-{sha(data)[7:]}"}]
    assert http.get(f"{registry}{API}/{model['id']}", timeout=10).json() == model
    url = f"{registry}{API}/{model['id']}/files/tiny.gguf"
    whole = http.get(url, timeout=10)
    assert whole.content == data and whole.headers["ETag"] == f'"{sha(data)}"'
    part = http.get(url, headers={"Range": "bytes=1000-1999"}, timeout=10)
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    tail = http.get(url, headers={"Range": "bytes=-16"}, timeout=10)
    assert tail.status_code == 206 and tail.content == data[-16:]
    rest = http.get(url, headers={"Range": f"bytes={len(data) - 5}-"}, timeout=10)
    assert rest.content == data[-5:]
    bad = http.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{len(data)}"
    assert bad.json()["code"] == 416


def test_multi_file_models_through_the_python_client(registry: str, root: Path) -> None:
    st = root / "st-model"
    st.mkdir()
    save_file({"embed": np.zeros((64, 16), np.float32), "head": np.ones((64, 16), np.float32)},
              str(st / "model.safetensors"))
    (st / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 32768}))
    (st / "tokenizer.json").write_text('{"version": "1.0"}')
    (st / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ bos_token }}"}))
    client = ModelRegistryClient(registry, chunk_bytes=3000, resumable_above=2000)  # safetensors go in chunks
    model = client.upload_model(st, name="acme/qwen-mini", version="2024.1")
    assert model["format"] == "safetensors" and model["reference"] == "acme/qwen-mini:2024.1"
    assert model["details"]["architecture"] == "Qwen2ForCausalLM" and model["details"]["parameter_count"] == 2048
    assert model["details"]["dtype"] == "F32" and model["details"]["context_length"] == 32768
    lora = root / "lora"
    lora.mkdir()
    save_file({"a": np.zeros((8, 16), np.float16)}, str(lora / "adapter_model.safetensors"))
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "acme/qwen-mini", "r": 8}))
    adapter = client.register_training_output(lora, name="acme/qwen-mini-support", base_model=model["id"],
                                              run_id="run-2024-06-01")
    assert adapter["format"] == "lora" and adapter["source"] == "training"
    assert adapter["lineage"] == {"base_model": model["id"], "run_id": "run-2024-06-01"}
    assert adapter["details"]["base_model"] == "acme/qwen-mini" and adapter["details"]["rank"] == 8
    assert {m["id"] for m in client.list_models(format="lora")["models"]} == {adapter["id"]}
    assert client.list_models(source="training")["total"] == 1
    page = client.list_models(limit=1, offset=0)
    assert len(page["models"]) == 1 and page["total"] >= 2 and page["models"][0]["id"] == adapter["id"]
    got = client.download(model["id"], "model.safetensors", root / "dl.safetensors")
    assert got.read_bytes() == (st / "model.safetensors").read_bytes()


def _send_partial(url: str, method: str, path: str, headers: dict[str, str], body: bytes, declared: int) -> None:
    """Send a request whose body stops after `len(body)` of `declared` bytes, then vanish."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + body)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_interrupted_upload_resumes_from_the_offset(http, registry: str, gguf: Path) -> None:
    data = gguf.read_bytes()
    draft = http.post(f"{registry}{API}", json={"name": "resumed"}, timeout=10).json()
    session_ = http.post(f"{registry}{API}/{draft['id']}/uploads", json={"path": "tiny.gguf", "size": len(data)},
                         timeout=10).json()
    location = f"{API}/uploads/{session_['id']}"
    half = len(data) // 2
    _send_partial(registry, "PATCH", location, {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"},
                  data[:half], len(data))
    offset = wait_until(lambda: http.get(registry + location, timeout=5).json()["offset"] == half and half,
                        message="the server to keep the bytes that arrived")
    resp = http.patch(registry + location, data=data[offset:],
                      headers={"Content-Range": f"bytes {offset}-{len(data) - 1}/{len(data)}"}, timeout=30)
    assert resp.status_code == 202 and resp.json()["offset"] == len(data)
    assert http.put(f"{registry}{location}", params={"digest": sha(data)}, timeout=30).status_code == 201
    model = http.post(f"{registry}{API}/{draft['id']}/commit", timeout=30).json()
    assert http.get(f"{registry}{API}/{model['id']}/files/tiny.gguf", timeout=10).content == data


def test_interrupted_one_shot_upload_never_appears(http, registry: str, gguf: Path) -> None:
    before = count(http, registry)
    data = gguf.read_bytes()
    _send_partial(registry, "POST", f"{API}/upload?name=ghost&filename=g.gguf", {}, data[:50_000], len(data))
    wait_until(lambda: count(http, registry, state="draft", name="ghost") == 0, message="the draft to go")
    assert count(http, registry) == before and count(http, registry, name="ghost") == 0


def test_restart_mid_session_continues(root: Path, http, gguf: Path) -> None:
    svc, url = start_registry(root, "restarted")
    data = gguf.read_bytes()
    draft = http.post(f"{url}{API}", json={"name": "survivor"}, timeout=10).json()
    up = http.post(f"{url}{API}/{draft['id']}/uploads", json={"path": "tiny.gguf"}, timeout=10).json()
    http.patch(f"{url}{API}/uploads/{up['id']}", data=data[:100_000], headers={"Upload-Offset": "0"}, timeout=10)
    svc.kill()  # SIGKILL: no chance to tidy up
    svc, url = start_registry(root, "restarted", port=int(url.rsplit(":", 1)[1]))
    try:
        status = http.get(f"{url}{API}/uploads/{up['id']}", timeout=10)
        assert status.json()["offset"] == 100_000 and status.headers["Upload-Offset"] == "100000"
        http.patch(f"{url}{API}/uploads/{up['id']}", data=data[100_000:], headers={"Upload-Offset": "100000"},
                   timeout=10)
        done = http.put(f"{url}{API}/uploads/{up['id']}", params={"digest": sha(data)}, timeout=10)
        assert done.status_code == 201, done.text
        assert http.post(f"{url}{API}/{draft['id']}/commit", timeout=10).json()["state"] == "ready"
    finally:
        svc.stop()


def raw_request(url: str, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    """http.client sends the path exactly as given (requests would normalise '../')."""
    conn = HTTPConnection(url.removeprefix("http://"), timeout=10)
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    status, payload = resp.status, json.loads(resp.read() or b"{}")
    conn.close()
    return status, payload


@pytest.mark.parametrize("path", ["../../etc/passwd", "a/../../x", "%2e%2e/%2e%2e/etc/passwd", "a%5Cb.gguf",
                                  "a%00.gguf", "C:%2Fwin.gguf"])
def test_unsafe_file_paths_in_urls_are_400(http, registry: str, path: str) -> None:
    draft = http.post(f"{registry}{API}", json={"name": "paths"}, timeout=10).json()
    status, body = raw_request(registry, "PUT", f"{API}/{draft['id']}/files/{path}", b"GGUF")
    assert status == 400 and body["code"] == 400, body
    assert http.get(f"{registry}{API}/{draft['id']}", timeout=10).json()["files"] == []


def registry_storage(url: str) -> str:
    return session().get(f"{url}{API}/storage", timeout=5).json()["root"]


@pytest.mark.parametrize("params, data, code, words", [
    ({"filename": "/etc/passwd"}, b"GGUF", 400, "absolute"),
    ({"filename": "x\\y.gguf"}, b"GGUF", 400, "backslash"),
    ({"filename": "m.gguf"}, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 422, "not a GGUF file"),
    ({"filename": "m.safetensors", "format": "safetensors"}, b"\xff" * 64, 422, "safetensors"),
    ({"filename": "m.gguf", "digest": "sha256:" + "0" * 64}, None, 400, "digest mismatch"),
    ({"filename": "m.gguf"}, b"GGUF" + b"\0" * (4 << 20), 413, "limit"),
], ids=["absolute", "backslash", "not-gguf", "not-safetensors", "digest", "too-large"])
def test_bad_uploads(http, registry: str, gguf: Path, params: dict, data: bytes | None, code: int,
                     words: str) -> None:
    before = count(http, registry)
    resp = http.post(f"{registry}{API}/upload", params={"name": "bad", **params},
                     data=gguf.read_bytes() if data is None else data, timeout=30)
    assert resp.status_code == code and words in resp.json()["message"], resp.text
    assert count(http, registry) == before and count(http, registry, state="draft", name="bad") == 0


def test_concurrent_uploads_of_one_name(http, registry: str, gguf: Path) -> None:
    base = gguf.read_bytes()
    outcomes: list[tuple[bytes, requests.Response]] = []

    def go(i: int) -> None:
        data = base + i.to_bytes(4, "little")  # distinct bytes per uploader
        outcomes.append((data, upload(session(), registry, "racer", data)))
    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = [(d, r.json()) for d, r in outcomes if r.status_code == 201]
    assert all(r.status_code in (201, 409) for _, r in outcomes) and created
    assert len({m["version"] for _, m in created}) == len(created)
    for data, model in created:
        stored = http.get(f"{registry}{API}/{model['id']}/files/model.gguf", timeout=10).content
        assert stored == data, "never a mixed model"


def test_delete_keeps_blobs_another_model_shares(http, registry: str, gguf: Path) -> None:
    data = gguf.read_bytes() + b"shared"
    a, b = (upload(http, registry, name, data).json() for name in ("share-a", "share-b"))
    storage = Path(registry_storage(registry))
    blob = storage / a["files"][0]["location"]
    assert a["files"][0]["location"] == b["files"][0]["location"] and blob.read_bytes() == data
    assert http.delete(f"{registry}{API}/{a['id']}", timeout=10).status_code == 204
    assert blob.read_bytes() == data and not (storage / "trees" / a["id"]).exists()
    assert http.get(f"{registry}{API}/{b['id']}/files/model.gguf", timeout=10).content == data
    assert http.delete(f"{registry}{API}/{b['id']}", timeout=10).status_code == 204
    assert not blob.exists()


def test_fingerprint_file_matches_the_api(http, registry: str) -> None:
    storage = http.get(f"{registry}{API}/storage", timeout=5).json()
    assert (Path(storage["root"]) / ".eldric-fingerprint").read_text().strip() == storage["fingerprint"]


def test_conflicting_paths_are_409_and_the_committed_tree_is_whole(http, registry: str) -> None:
    """Issue 11: a draft with ok.txt and ok.txt/inner committed as ready with 3 of its 9 files in the tree."""
    draft = http.post(f"{registry}{API}", json={"name": "nine", "format": "other"}, timeout=10).json()
    paths = ["a.txt", "b.txt", "c.txt", "d/e.txt", "d/f.txt", "g.txt", "h.txt", "i.txt", "ok.txt"]
    for path in paths:
        assert http.put(f"{registry}{API}/{draft['id']}/files/{path}", data=path.encode(), timeout=10).status_code == 201
    resp = http.put(f"{registry}{API}/{draft['id']}/files/ok.txt/inner", data=b"inner", timeout=10)
    assert resp.status_code == 409 and "'ok.txt' and 'ok.txt/inner'" in resp.json()["message"], resp.text
    model = http.post(f"{registry}{API}/{draft['id']}/commit", timeout=10).json()
    assert model["state"] == "ready"
    tree = Path(registry_storage(registry)) / model["storage"]["tree"]  # what a worker opens over NFS
    assert {str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()} == \
        {path: path.encode() for path in paths}


def test_oversized_input_gets_json_errors_not_500s(http, registry: str) -> None:
    resp = http.get(f"{registry}{API}", params={"offset": 10**20}, timeout=10)
    assert resp.status_code == 422 and "offset" in resp.json()["errors"]["query"], resp.text
    resp = http.get(f"{registry}{API}", params={"name": "n" * 9000}, timeout=10)  # over gunicorn's request line
    assert resp.status_code == 414 and resp.headers["Content-Type"] == "application/json", resp.text
    assert resp.json()["code"] == 414
