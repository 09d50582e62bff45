"""URL imports by a real `eldric registry` from a local HTTP server: with and without Range support,
connections dropped mid-file, tokens, multi-file models and digest checks."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.support.gguf_models import write_llama_gguf
from tests.support.processes import Service, eldric, free_port, session, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
API = "/api/v1/model-registry"


class FlakyServer:
    """Serves `files`; Range only if `ranges`; the first answers stop after `drops` bytes each."""

    def __init__(self, files: dict[str, bytes], *, ranges: bool = True, drops: list[int] | None = None,
                 token: str | None = None) -> None:
        self.files, self.ranges, self.drops, self.token = files, ranges, list(drops or []), token
        self.log: list[tuple[str, str | None, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.answer(self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            self.log.append((path, h.headers.get("Range"), 401))
            h.send_error(401)
            return
        data = self.files.get(path)
        if data is None:
            self.log.append((path, h.headers.get("Range"), 404))
            h.send_error(404)
            return
        match = re.match(r"bytes=(\d+)-$", h.headers.get("Range", "")) if self.ranges else None
        start = int(match.group(1)) if match else 0
        status = 206 if match else 200
        self.log.append((path, h.headers.get("Range"), status))
        h.send_response(status)
        h.send_header("Content-Length", str(len(data) - start))
        if match:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        body = data[start:]
        if self.drops:
            body = body[:self.drops.pop(0)]  # then the connection closes: a short body
        h.wfile.write(body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("registry-imports")


@pytest.fixture(scope="module")
def registry(root: Path):
    port = free_port()
    svc = Service("registry", eldric("registry", "--port", str(port), "--storage", str(root / "store"),
                                     "--min-free", "0"), root, cwd=REPO).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: session().get(f"{url}/healthz", timeout=2).ok, message=f"registry\n{svc.log_tail()}")
    yield url
    svc.stop()


@pytest.fixture(scope="module")
def gguf(root: Path) -> bytes:
    return write_llama_gguf(root / "web.gguf", name="web", width=96).read_bytes()


def run_import(registry: str, body: dict) -> dict:
    http = session()
    resp = http.post(f"{registry}{API}/imports", json=body, timeout=10)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["Location"] == f"{API}/imports/{job['id']}"
    return wait_until(lambda: (s := http.get(f"{registry}{API}/imports/{job['id']}", timeout=5).json())["state"]
                      in ("completed", "failed") and s, timeout=30, message="the import to finish")


def stored(registry: str, model_id: str, path: str) -> bytes:
    return session().get(f"{registry}{API}/{model_id}/files/{path}", timeout=10).content


@pytest.mark.parametrize("ranges", [True, False])
def test_import_survives_a_dropped_connection(registry: str, gguf: bytes, ranges: bool) -> None:
    server = FlakyServer({"/m/web.gguf": gguf}, ranges=ranges, drops=[len(gguf) // 3])
    try:
        job = run_import(registry, {"name": f"web-{ranges}", "url": f"{server.url}/m/web.gguf?sig=x"})
    finally:
        server.close()
    assert job["state"] == "completed", job
    assert job["percent"] == 100.0 and job["completed"] == job["total"] == len(gguf)
    assert job["files"] == [{"url": f"{server.url}/m/web.gguf", "path": "web.gguf"}]  # no query string kept
    assert stored(registry, job["model_id"], "web.gguf") == gguf
    first, second = server.log[0], server.log[1]
    assert first == ("/m/web.gguf", None, 200)
    assert second == ("/m/web.gguf", f"bytes={len(gguf) // 3}-", 206 if ranges else 200)
    model = session().get(f"{registry}{API}/{job['model_id']}", timeout=5).json()
    assert model["source"] == "import" and model["format"] == "gguf" and model["origin"]["job_id"] == job["id"]


def test_multi_file_import_with_a_token(registry: str, root: Path) -> None:
    src = root / "hf"
    src.mkdir()
    save_file({"w": np.arange(96, dtype=np.float32).reshape(8, 12)}, str(src / "model.safetensors"))
    files = {"/org/repo/resolve/main/model.safetensors": (src / "model.safetensors").read_bytes(),
             "/org/repo/resolve/main/config.json": json.dumps({"architectures": ["GPT2LMHeadModel"]}).encode(),
             "/org/repo/resolve/main/tokenizer.json": b'{"model": {}}'}
    server = FlakyServer(files, token="hf_abc")
    entries = [{"url": server.url + p, "path": p.rsplit("/", 1)[1]} for p in files]
    try:
        refused = run_import(registry, {"name": "org/repo", "files": entries})
        job = run_import(registry, {"name": "org/repo", "files": entries, "token": "hf_abc",
                                    "description": "from the hub"})
    finally:
        server.close()
    assert refused["state"] == "failed" and "access denied" in refused["error"] and refused["model_id"] is None
    assert job["state"] == "completed", job
    model = session().get(f"{registry}{API}/{job['model_id']}", timeout=5).json()
    assert model["format"] == "safetensors" and model["details"]["architecture"] == "GPT2LMHeadModel"
    assert model["details"]["parameter_count"] == 96 and model["description"] == "from the hub"
    assert "hf_abc" not in json.dumps(job) + json.dumps(model)
    listed = session().get(f"{registry}{API}", params={"name": "org/repo"}, timeout=5).json()
    assert [m["id"] for m in listed["models"]] == [model["id"]], "the refused import left nothing"


def test_digest_mismatch_and_missing_file_fail_the_import(registry: str, gguf: bytes) -> None:
    server = FlakyServer({"/x.gguf": gguf})
    try:
        wrong = run_import(registry, {"name": "wrong", "url": f"{server.url}/x.gguf", "digest": "sha256:" + "1" * 64})
        missing = run_import(registry, {"name": "missing", "url": f"{server.url}/nope.gguf"})
        right = run_import(registry, {"name": "right", "url": f"{server.url}/x.gguf",
                                      "digest": "sha256:" + hashlib.sha256(gguf).hexdigest()})
    finally:
        server.close()
    assert wrong["state"] == "failed" and "expected sha256:111" in wrong["error"]
    assert missing["state"] == "failed" and "HTTP 404" in missing["error"]
    assert right["state"] == "completed"
    drafts = session().get(f"{registry}{API}", params={"state": "draft"}, timeout=5).json()
    assert drafts["total"] == 0


def test_bad_import_requests(registry: str) -> None:
    http = session()
    for body in ({"name": "x", "url": "file:///etc/passwd"}, {"name": "x", "url": "http://h/a", "path": "../a"},
                 {"name": "x"}):
        resp = http.post(f"{registry}{API}/imports", json=body, timeout=5)
        assert resp.status_code == 400 and resp.json()["code"] == 400, resp.text
