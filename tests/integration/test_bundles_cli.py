"""`eldric export` and `eldric import` as real processes between real registries (Debian's docker-registry
standing in for the data node's /v2/), with skopeo as an independent reader and writer of the bundles."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from testbed.gguf_models import write_gguf_of_size, write_llama_gguf
from testbed.oci_registry import (CONFIG_V1, MANIFEST_V2, OCIRegistry, get_manifest, push_blob,
                                       push_ollama_model)
from testbed.processes import Service, eldric, free_port, session, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SECRET = "bundle-secret"
SKOPEO = shutil.which("skopeo") or "skopeo"
# Not a skip: scripts/install-deps.sh installs skopeo, so a missing one is a broken set-up, not a pass.
needs_skopeo = pytest.mark.usefixtures("skopeo_installed")


@pytest.fixture(scope="session")
def skopeo_installed() -> None:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed: run scripts/install-deps.sh (or apt-get install -y skopeo)")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="module")
def source(work):
    """The registry models are exported from, holding `library/tiny:latest` and `acme/house:v1` (Ollama layout)."""
    with OCIRegistry(work / "source") as reg:
        push_ollama_model(reg.url, "library/tiny", "latest", gguf_path=write_llama_gguf(work / "tiny.gguf"))
        push_ollama_model(reg.url, "acme/house", "v1", gguf_path=write_llama_gguf(work / "house.gguf", n_layers=3))
        yield reg


@pytest.fixture
def target(tmp_path):
    with OCIRegistry(tmp_path / "target") as reg:
        yield reg


class DataNode:
    """`eldric registry` (the data node) on a free port, its /v2/ closed by the cluster secret, no upstream."""

    def __init__(self, root: Path, upstream: str = "none") -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.service = Service(f"data-node-{port}", eldric("registry", "--port", str(port), "--storage",
                                                           str(root / f"storage-{port}"), "--min-free", "0"),
                               root, env={"ELDRIC_CLUSTER_SECRET": SECRET, "ELDRIC_MIRROR_UPSTREAM": upstream,
                                          "ELDRIC_URL_ALLOWLIST": "127.0.0.1"},
                               cwd=REPO).start()
        self.http = session()
        self.http.headers["Authorization"] = f"Bearer {SECRET}"
        wait_until(lambda: self.http.get(f"{self.url}/v2/", timeout=2).ok, timeout=30,
                   message=f"the data node's /v2/\n{self.service.log_tail()}")

    def manifest(self, repo: str, tag: str) -> requests.Response:
        return self.http.get(f"{self.url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_V2}, timeout=30)


@pytest.fixture
def data_node(tmp_path):
    node = DataNode(tmp_path)
    yield node
    node.service.stop()


def run(*args: str, home: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """`eldric ARGS` as a subprocess with an environment free of ELDRIC_* settings (but `env`)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run([sys.executable, "-m", "eldric.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def skopeo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SKOPEO, *args], capture_output=True, text=True, timeout=120)


def manifest_of(reg: OCIRegistry, repo: str, tag: str) -> bytes:
    resp = get_manifest(reg.url, repo, tag)
    assert resp.status_code == 200, (repo, tag, resp.status_code, resp.text)
    return resp.content


def blob_digests(raw: bytes) -> list[str]:
    doc = json.loads(raw)
    return [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]


def test_export_then_import_into_another_registry_keeps_every_digest(source, target, tmp_path):
    bundle = tmp_path / "site.tar"
    done = run("export", "tiny", "acme/house:v1", "-o", str(bundle), "--registry", source.url, home=tmp_path)
    assert done.returncode == 0, done.stderr
    tiny, house = manifest_of(source, "library/tiny", "latest"), manifest_of(source, "acme/house", "v1")
    assert f"exported tiny:latest (sha256:{hashlib.sha256(tiny).hexdigest()}" in done.stdout
    assert f"wrote {bundle}: 2 model(s), " in done.stdout
    assert "export site.tar" in done.stderr  # the progress bar (stdout is not a terminal)
    assert not bundle.with_name("site.tar.partial").exists()

    done = run("import", str(bundle), "--registry", target.url, home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"imported acme/house:v1 (sha256:{hashlib.sha256(house).hexdigest()}" in done.stdout
    assert f"{bundle}: 2 model(s) into {target.url}: sent " in done.stdout
    # Same manifest bytes, so the same digests of manifests and of every blob; and the blobs are there.
    assert manifest_of(target, "library/tiny", "latest") == tiny
    assert manifest_of(target, "acme/house", "v1") == house
    with requests.Session() as http:
        for repo, raw in (("library/tiny", tiny), ("acme/house", house)):
            for digest in blob_digests(raw):
                got = http.get(f"{target.url}/v2/{repo}/blobs/{digest}", timeout=30)
                assert "sha256:" + hashlib.sha256(got.content).hexdigest() == digest

    again = run("import", str(bundle), "--registry", target.url, "--json", home=tmp_path)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["sent_blobs"] == 0 and result["sent_bytes"] == 0 and result["skipped_blobs"] > 0


def test_export_of_an_unknown_model_fails_with_one_line(source, tmp_path):
    done = run("export", "nope:1", "-o", str(tmp_path / "x.tar"), "--registry", source.url, home=tmp_path)
    assert done.returncode == 1
    assert "eldric export: nope:1: not on the data node" in done.stderr
    assert not list(tmp_path.glob("x.tar*"))


@needs_skopeo
def test_skopeo_reads_our_bundle(source, tmp_path):
    bundle = tmp_path / "site.tar"
    assert run("export", "tiny", "acme/house:v1", "-o", str(bundle), "--registry", source.url,
               home=tmp_path).returncode == 0
    tiny = manifest_of(source, "library/tiny", "latest")
    copied = skopeo("copy", f"oci-archive:{bundle}:library/tiny:latest", f"dir:{tmp_path / 'dir'}")
    assert copied.returncode == 0, copied.stderr
    for digest in blob_digests(tiny):
        data = (tmp_path / "dir" / digest.split(":")[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    copied = skopeo("copy", f"oci-archive:{bundle}:acme/house:v1", f"oci:{tmp_path / 'layout'}:v1")
    assert copied.returncode == 0, copied.stderr
    inspected = skopeo("inspect", f"oci-archive:{bundle}:library/tiny:latest")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Layers"] == blob_digests(tiny)[1:]


@needs_skopeo
def test_skopeo_refuses_ollama_docker_manifests_which_is_why_bundles_hold_oci_ones(source, tmp_path):
    host = source.url.removeprefix("http://")
    copied = skopeo("copy", "--src-tls-verify=false", f"docker://{host}/library/tiny:latest",
                    f"oci-archive:{tmp_path / 'b.tar'}")
    assert copied.returncode != 0
    assert 'unsupported docker v2s2 media type: \\"application/vnd.ollama.image.model\\"' in copied.stderr


@needs_skopeo
def test_skopeo_copies_an_ollama_model_through_the_data_node_into_a_bundle_that_imports(source, target, tmp_path):
    """The data node gives skopeo (which asks for OCI first) the OCI form of Ollama's manifest; importing
    skopeo's bundle gives back Ollama's manifest byte for byte: the same digest as upstream's."""
    node = DataNode(tmp_path, upstream=source.url)  # the mirror of the source registry
    try:
        bundle = tmp_path / "skopeo.tar"
        copied = skopeo("copy", "--src-tls-verify=false", "--src-creds", f"eldric:{SECRET}",
                        f"docker://{node.url.removeprefix('http://')}/library/tiny:latest",
                        f"oci-archive:{bundle}:library/tiny:latest")
        assert copied.returncode == 0, copied.stderr
    finally:
        node.service.stop()
    done = run("import", str(bundle), "--registry", target.url, home=tmp_path)
    assert done.returncode == 0, done.stderr
    upstream = manifest_of(source, "library/tiny", "latest")
    assert manifest_of(target, "library/tiny", "latest") == upstream


def push_as_oci(reg: OCIRegistry, from_repo: str, tag: str, repo: str) -> bytes:
    """The model `from_repo:tag` again under `repo`, its manifest in OCI media types (what skopeo can read)."""
    doc = json.loads(manifest_of(reg, from_repo, tag))
    with requests.Session() as http:
        for digest in blob_digests(json.dumps(doc).encode()):
            push_blob(reg.url, repo, http.get(f"{reg.url}/v2/{from_repo}/blobs/{digest}", timeout=30).content)
        doc["mediaType"], doc["config"]["mediaType"] = OCI_MANIFEST, OCI_CONFIG
        raw = json.dumps(doc, indent=1).encode()
        assert http.put(f"{reg.url}/v2/{repo}/manifests/{tag}", data=raw, headers={"Content-Type": OCI_MANIFEST},
                        timeout=30).status_code == 201
    return raw


@needs_skopeo
def test_a_bundle_skopeo_made_imports(source, target, tmp_path):
    push_as_oci(source, "library/tiny", "latest", "library/oci-tiny")
    host = source.url.removeprefix("http://")
    bundle = tmp_path / "skopeo.tar"
    copied = skopeo("copy", "--src-tls-verify=false", f"docker://{host}/library/oci-tiny:latest",
                    f"oci-archive:{bundle}:library/oci-tiny:latest")
    assert copied.returncode == 0, copied.stderr
    with tarfile.open(bundle) as tar:
        assert tar.getnames()[-1] in ("index.json", "oci-layout")  # skopeo writes the index after the blobs

    done = run("import", str(bundle), "--registry", target.url, home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "imported oci-tiny:latest" in done.stdout
    imported = json.loads(manifest_of(target, "library/oci-tiny", "latest"))  # docker-registry serves it as schema 2
    assert imported["mediaType"] == MANIFEST_V2 and imported["config"]["mediaType"] == CONFIG_V1
    assert blob_digests(json.dumps(imported).encode()) == blob_digests(manifest_of(source, "library/tiny", "latest"))

    nameless = tmp_path / "nameless.tar"
    assert skopeo("copy", "--src-tls-verify=false", f"docker://{host}/library/oci-tiny:latest",
                  f"oci-archive:{nameless}").returncode == 0
    done = run("import", str(nameless), "--registry", target.url, home=tmp_path)
    assert done.returncode == 1 and "has no name annotation: give the model's name with --name" in done.stderr
    done = run("import", str(nameless), "--registry", target.url, "--name", "acme/renamed:v2", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(manifest_of(target, "acme/renamed", "v2"))["layers"] == imported["layers"]


def flip_byte(bundle: Path, digest: str) -> None:
    with tarfile.open(bundle) as tar:
        offset = tar.getmember("blobs/sha256/" + digest.split(":")[1]).offset_data
    with open(bundle, "r+b") as f:
        f.seek(offset + 1000)
        b = f.read(1)
        f.seek(offset + 1000)
        f.write(bytes([b[0] ^ 0xFF]))


def import_target(kind: str, request):
    """(url, http session, manifest(repo, tag)) of where a bundle is imported: the data node or a plain registry."""
    if kind == "data node":
        node = request.getfixturevalue("data_node")
        return node.url, node.http, node.manifest
    reg = request.getfixturevalue("target")
    return reg.url, session(), lambda repo, tag: get_manifest(reg.url, repo, tag)


@pytest.mark.parametrize("kind", ["docker-registry", "data node"])
def test_a_tampered_bundle_is_refused_whole(kind, source, tmp_path, request):
    bundle = tmp_path / "site.tar"
    assert run("export", "tiny", "acme/house:v1", "-o", str(bundle), "--registry", source.url,
               home=tmp_path).returncode == 0
    bad = json.loads(manifest_of(source, "acme/house", "v1"))["layers"][0]["digest"]
    flip_byte(bundle, bad)
    url, http, manifest = import_target(kind, request)
    done = run("import", str(bundle), "--registry", url, "--token", SECRET, home=tmp_path)
    assert done.returncode == 1
    assert f"refused {bundle}: blob {bad} (layer application/vnd.ollama.image.model of acme/house:v1)" in done.stderr
    assert "no model was imported" in done.stderr
    for repo, tag in (("library/tiny", "latest"), ("acme/house", "v1")):  # not even the intact one
        assert manifest(repo, tag).status_code == 404
    assert http.head(f"{url}/v2/acme/house/blobs/{bad}", timeout=10).status_code == 404


def test_the_data_node_round_trip_gives_the_same_bundle_byte_for_byte(source, data_node, tmp_path):
    first, second = tmp_path / "first.tar", tmp_path / "second.tar"
    assert run("export", "tiny", "acme/house:v1", "-o", str(first), "--registry", source.url,
               home=tmp_path).returncode == 0
    done = run("import", str(first), "--registry", data_node.url, home=tmp_path, ELDRIC_CLUSTER_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    assert data_node.manifest("library/tiny", "latest").content == manifest_of(source, "library/tiny", "latest")
    done = run("export", "tiny:latest", "acme/house:v1", "-o", str(second), home=tmp_path,
               ELDRIC_REGISTRY_URL=data_node.url, ELDRIC_API_TOKEN=SECRET)
    assert done.returncode == 0, done.stderr
    assert second.read_bytes() == first.read_bytes()


def test_the_data_node_asks_for_its_token(source, data_node, tmp_path):
    done = run("export", "tiny", "-o", str(tmp_path / "x.tar"), "--registry", data_node.url, home=tmp_path)
    assert done.returncode == 1
    assert "HTTP 401" in done.stderr and "--token" in done.stderr, done.stderr


@needs_skopeo
def test_a_registry_model_exports_as_an_ollama_model(data_node, target, tmp_path):
    gguf = write_llama_gguf(tmp_path / "house.gguf", name="house")
    with open(gguf, "rb") as f:
        up = data_node.http.post(f"{data_node.url}/api/v1/model-registry/upload", data=f, timeout=60,
                                 params={"name": "acme/gguf-house", "version": "v1", "filename": "house.gguf"})
    assert up.status_code in (200, 201), up.text
    served = data_node.manifest("acme/gguf-house", "v1")
    assert served.status_code == 200, served.text
    bundle = tmp_path / "registry-model.tar"
    done = run("export", "acme/gguf-house:v1", "-o", str(bundle), "--registry", data_node.url, "--token", SECRET,
               home=tmp_path)
    assert done.returncode == 0, done.stderr
    inspected = skopeo("inspect", f"oci-archive:{bundle}:acme/gguf-house:v1")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Layers"][0] == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    done = run("import", str(bundle), "--registry", target.url, home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert manifest_of(target, "acme/gguf-house", "v1") == served.content


class StallingProxy:
    """Forwards every request to `upstream` (Host kept, so upload Locations point here), recording each PATCH.

    With `stall_after` set, the PATCH that would pass that many PATCH bytes in all hangs (never forwarded)
    until `release()`: a push frozen mid-blob, for a test to kill.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.patches: list[tuple[str, str]] = []  # (upload path, Content-Range)
        self.patched = 0
        self.stall_after: int | None = None
        self.stalled = threading.Event()
        self._release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._forward()

            do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

            def do_PATCH(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if proxy.stall_after is not None and proxy.patched + length > proxy.stall_after:
                    proxy.stalled.set()
                    proxy._release.wait(60)
                    self.close_connection = True
                    return
                proxy.patched += length
                proxy.patches.append((self.path.split("?")[0], self.headers.get("Content-Range", "")))
                self._forward()

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                skip = ("connection", "transfer-encoding", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                with requests.Session() as http:
                    http.trust_env = False
                    up = http.request(self.command, proxy.upstream + self.path, data=body, headers=headers,
                                      allow_redirects=False, timeout=60)
                self.send_response(up.status_code)
                for name, value in up.headers.items():
                    if name.lower() not in skip:
                        self.send_header(name, value)
                data = b"" if self.command == "HEAD" else up.content
                self.send_header("Content-Length", up.headers.get("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.stall_after = None
        self._release.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("kind", ["docker-registry", "data node"])
def test_an_import_killed_mid_way_resumes_without_resending_finished_blobs(kind, source, tmp_path, request):
    big = tmp_path / "big.gguf"
    if not big.exists():
        write_gguf_of_size(big, 6 << 20)
    pushed = push_ollama_model(source.url, "library/big", "latest", gguf_path=big)
    bundle = tmp_path / "big.tar"
    assert run("export", "big", "-o", str(bundle), "--registry", source.url, home=tmp_path).returncode == 0
    url, http, manifest = import_target(kind, request)
    proxy = StallingProxy(url)
    try:
        proxy.stall_after = 3 << 20  # the config (first in the file) and 2 MiB of the model layer get through
        argv = eldric("import", str(bundle), "--registry", proxy.url, "--chunk-size", str(1 << 20), "--token", SECRET)
        first = Service("import-1", argv, tmp_path, env={"HOME": str(tmp_path)}, cwd=REPO).start()
        wait_until(proxy.stalled.is_set, timeout=60, message=f"the import to reach the stall\n{first.log_tail()}")
        first.kill()  # SIGKILL: no cleanup, no goodbye
        assert manifest("library/big", "latest").status_code == 404  # nothing visible yet
        before = list(proxy.patches)
        model = pushed["layers"]["application/vnd.ollama.image.model"]
        sent_of_model = [r for _, r in before if r.startswith(("1048576-", "0-1048575"))]
        assert len(before) == 3 and len(sent_of_model) == 2, before  # the config, 2 MiB of the model layer

        proxy.release()
        done = run("import", str(bundle), "--registry", proxy.url, "--chunk-size", str(1 << 20), "--token", SECRET,
                   home=tmp_path)
        assert done.returncode == 0, done.stderr
        after = proxy.patches[len(before):]
        assert not set(after) & set(before), (before, after)  # no chunk went twice
        assert after[0][1].startswith(f"{2 << 20}-") and after[0][0] == before[-1][0]  # same session, at 2 MiB
        assert ", 1 already there, resumed 2.1 MB already sent" in done.stdout, done.stdout
        assert manifest("library/big", "latest").content == pushed["manifest_bytes"]
        got = http.get(f"{url}/v2/library/big/blobs/{model}", timeout=60)
        assert "sha256:" + hashlib.sha256(got.content).hexdigest() == model
    finally:
        proxy.close()
