"""URL imports by a real `eldric registry` from a local HTTP server: with and without Range support,
connections dropped mid-file, tokens, multi-file models and digest checks."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from safetensors.numpy import save_file

from eldric.core.blobstore import BlobStore
from eldric.transfer.download import DownloadOptions
from eldric.transfer.upstreams import AddressPolicy
from eldric.transfer.urlfetch import FetchOptions, fetch
from registry.imports import Importer
from registry.service import RegistryService
from testbed.gguf_models import write_llama_gguf
from testbed.processes import LOOPBACK, Service, eldric, free_port, session, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
API = "/api/v1/model-registry"


def serve_http(answer) -> ThreadingHTTPServer:
    """A threaded loopback HTTP server whose GETs go to `answer(handler)`; serving until the process ends."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            answer(self)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    return httpd


class FlakyServer:
    """Serves `files`; Range only if `ranges`; the first answers (not to the size probe, `bytes=0-0`)
    stop after `drops` bytes each."""

    def __init__(self, files: dict[str, bytes], *, ranges: bool = True, drops: list[int] | None = None,
                 token: str | None = None) -> None:
        self.files, self.ranges, self.drops, self.token = files, ranges, list(drops or []), token
        self.log: list[tuple[str, str | None, int]] = []
        self.httpd = serve_http(self.answer)
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
        match = re.match(r"bytes=(\d+)-(\d*)$", h.headers.get("Range", "")) if self.ranges else None
        start = int(match.group(1)) if match else 0
        end = min(int(match.group(2)), len(data) - 1) if match and match.group(2) else len(data) - 1
        status = 206 if match else 200
        self.log.append((path, h.headers.get("Range"), status))
        h.send_response(status)
        h.send_header("Content-Length", str(end + 1 - start))
        if match:
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        h.end_headers()
        body = data[start:end + 1]
        if self.drops and h.headers.get("Range") != "bytes=0-0":
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
                                     "--min-free", "0"), root, env={"ELDRIC_URL_ALLOWLIST": LOOPBACK}, cwd=REPO).start()
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
    # the size probe, the file as one range (smaller than a part), the rest after the cut; a server
    # without Range sends everything again and the bytes already on disk are read past
    status = 206 if ranges else 200
    assert server.log == [("/m/web.gguf", "bytes=0-0", status), ("/m/web.gguf", f"bytes=0-{len(gguf) - 1}", status),
                          ("/m/web.gguf", f"bytes={len(gguf) // 3}-{len(gguf) - 1}", status)]
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


class GatedRangeServer:
    """Serves one file by byte ranges, answering the first `allow` ranges (the size probe aside) and
    holding every later request open until `release()`; records each request and how many were open at once."""

    def __init__(self, data: bytes, allow: int) -> None:
        self.data, self.allow = data, allow
        self.log: list[tuple[str | None, str | None]] = []  # (Range, Authorization)
        self.admitted = self.open = self.most_open = self.waiting = 0
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.httpd = serve_http(self.answer)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/big.gguf"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        wanted = h.headers.get("Range")
        with self.lock:
            self.log.append((wanted, h.headers.get("Authorization")))
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            probe = wanted == "bytes=0-0"
            held = not probe and self.admitted >= self.allow and not self.gate.is_set()
            self.admitted += 0 if probe else 1
            self.waiting += held
        try:
            if held:
                self.gate.wait()
                return  # the client that asked is gone by now
            start, end = (int(x) for x in re.fullmatch(r"bytes=(\d+)-(\d+)", wanted or "").groups())
            end = min(end, len(self.data) - 1)
            h.send_response(206)
            h.send_header("Content-Length", str(end + 1 - start))
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(self.data)}")
            h.end_headers()
            h.wfile.write(self.data[start:end + 1])
        finally:
            with self.lock:
                self.open -= 1

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()


# An importer with parts small enough to cut a test file into several ranges, as the registry
# runs it: a child process that submits one import, then waits to be killed.
_IMPORTER = """
import sys, time
from registry.imports import Importer
from registry.service import RegistryService
from tests.integration.test_registry_imports import SMALL_PARTS
importer = Importer(RegistryService(sys.argv[1], min_free_bytes=0), workers=1, fetch_options=SMALL_PARTS).start()
print(importer.submit({"name": "parallel", "url": sys.argv[2]})["id"], flush=True)
time.sleep(600)
"""
SMALL_PARTS = FetchOptions(download=DownloadOptions(parts=4, start_connections=4, part_bytes=64 << 10,
                                                   chunk_bytes=16 << 10, save_every_seconds=0.05,
                                                   retry_backoff_seconds=0.05),
                           url_policy=AddressPolicy.parse(LOOPBACK.split(",")))


def test_import_fetches_ranges_in_parallel_and_resumes_after_the_registry_was_killed(tmp_path: Path) -> None:
    data = write_llama_gguf(tmp_path / "big.gguf", name="big", width=96).read_bytes()  # ~7 ranges of 64 KiB
    parts = -(-len(data) // (64 << 10))
    server = GatedRangeServer(data, allow=3)
    store = tmp_path / "store"
    child = subprocess.Popen([sys.executable, "-c", _IMPORTER, str(store), server.url + "?sig=x"], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    try:
        job_id = child.stdout.readline().strip()
        state_file = store / "imports" / job_id / "partial" / "url-0.json"

        def three_ranges_saved() -> bool:
            state = json.loads(state_file.read_text())
            return sum(c == n for _, n, c in state["parts"]) == 3 and server.waiting == 4
        wait_until(three_ranges_saved, timeout=30, message="three ranges on disk and four connections waiting")
        saved = json.loads(state_file.read_text())["parts"]
    finally:
        child.kill()
        child.wait()
    assert server.most_open == 4, "ranges are fetched over several connections at once"
    first_run = len(server.log)
    server.release()

    importer = Importer(RegistryService(store, min_free_bytes=0), workers=1, fetch_options=SMALL_PARTS).start()
    try:
        assert importer.resume_unfinished() == 1
        job = wait_until(lambda: (s := importer.status(job_id))["state"] in ("completed", "failed") and s,
                         timeout=30, message="the resumed import")
    finally:
        server.close()
    assert job["state"] == "completed", job
    assert job["completed"] == job["total"] == len(data)
    blob, size, digest = importer.service.open_file(job["model_id"], "big.gguf")
    assert blob.read_bytes() == data and size == len(data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    # The second run asked only for what the first had not saved: no byte twice.
    asked = [r for r, _ in server.log[first_run:] if r != "bytes=0-0"]
    spans = [tuple(map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", r).groups())) for r in asked]
    assert sum(end + 1 - start for start, end in spans) == len(data) - sum(c for _, _, c in saved)
    assert {start for start, _ in spans}.isdisjoint({o for o, n, c in saved if c == n})
    assert len(saved) == parts > 4 and len(spans) == parts - 3
    assert not (store / "imports" / job_id).exists()


def test_a_token_stays_with_the_host_it_was_given_for(tmp_path: Path) -> None:
    data = b"GGUF" + bytes(range(256)) * 64
    cdn = GatedRangeServer(data, allow=100)
    cdn_url = cdn.url.replace("127.0.0.1", "localhost")  # another host name: what a redirect to a CDN is

    seen: list[str | None] = []

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(302)
            self.send_header("Location", cdn_url)
            self.send_header("Content-Length", "0")
            self.end_headers()
    hub = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    hub.daemon_threads = True
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        path, _digest, size = fetch(requests.Session(), f"http://127.0.0.1:{hub.server_port}/org/m/resolve/main/m.gguf",
                                    BlobStore(tmp_path / "done"), tmp_path / "partial", key="0",
                                    headers={"Authorization": "Bearer hf_secret"},
                                    options=FetchOptions(url_policy=AddressPolicy.parse(LOOPBACK.split(","))))
    finally:
        hub.shutdown()
        hub.server_close()
        cdn.close()
    assert path.read_bytes() == data and size == len(data)
    assert seen and all(a == "Bearer hf_secret" for a in seen)
    assert cdn.log and all(a is None for _, a in cdn.log), "the token must not reach the other host"
