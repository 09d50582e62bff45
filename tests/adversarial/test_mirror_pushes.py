"""Issue 21, finding 5: pushes and `eldric import` into a data node whose mirror is on (the default).

Before: with the upstream unreachable (an air-gapped site keeping the default `--upstream`) the
import stopped at `HEAD …/blobs/…: HTTP 502`; with it reachable, `HEAD` answered 200 for blobs
upstream had and the data node did not, so the client skipped them and `PUT manifest` failed
`MANIFEST_BLOB_UNKNOWN` (skopeo's push the same). Now `HEAD` answers from what the data node holds,
and for a blob of a model it mirrors it answers 200 only once the fetch is under way; the pulls of
Ollama's client (manifest, `HEAD` for the size, then `GET`) keep working through the mirror.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import MANIFEST_V2, get_manifest, push_ollama_model
from testbed.processes import free_port
from tests.integration.test_bundles_cli import SECRET, DataNode, run

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")]


@pytest.fixture(scope="module")
def bundle(oci, tiny_model, workdir) -> Path:
    """library/tiny:latest (upstream's, in docker-registry) exported as a bundle."""
    path = workdir / "tiny-bundle.tar"
    done = run("export", "tiny", "-o", str(path), "--registry", oci.url, home=workdir)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def node(request, tmp_path):
    started: list[DataNode] = []

    def start(upstream: str) -> DataNode:
        started.append(DataNode(tmp_path, upstream=upstream))
        return started[-1]
    yield start
    for n in started:
        n.service.stop()


def imported(node: DataNode, bundle: Path, home: Path) -> subprocess.CompletedProcess:
    return run("import", str(bundle), "--registry", node.url, "--token", SECRET, "--json", home=home)


def test_an_air_gapped_data_node_takes_imports_and_pushes_with_the_default_mirror(node, bundle, oci, tmp_path):
    gapped = node(f"http://127.0.0.1:{free_port()}")  # nothing listens there: the upstream is unreachable
    done = imported(gapped, bundle, tmp_path)
    assert done.returncode == 0, done.stderr
    assert gapped.manifest("library/tiny", "latest").content == get_manifest(oci.url, "library/tiny", "latest").content
    # A plain OCI push (skopeo asks HEAD for every blob first) into another repository.
    pushed = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"eldric:{SECRET}",
                             f"oci-archive:{bundle}:library/tiny:latest",
                             f"docker://{gapped.url.removeprefix('http://')}/acme/pushed:v1"],
                            capture_output=True, text=True, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    doc = json.loads(gapped.manifest("acme/pushed", "v1").content)
    for blob in [doc["config"], *doc["layers"]]:
        got = gapped.http.get(f"{gapped.url}/v2/acme/pushed/blobs/{blob['digest']}", timeout=30)
        assert got.status_code == 200 and "sha256:" + hashlib.sha256(got.content).hexdigest() == blob["digest"]


def test_an_import_sends_what_the_data_node_lacks_though_upstream_has_it(node, bundle, oci, tmp_path):
    mirror = node(oci.url)  # upstream holds every blob of the bundle; the data node none
    unknown = "sha256:" + "0" * 64
    head = mirror.http.head(f"{mirror.url}/v2/library/tiny/blobs/{unknown}", timeout=30)
    assert head.status_code == 404
    done = imported(mirror, bundle, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["skipped_blobs"] == 0 and result["sent_blobs"] >= 2
    raw = mirror.manifest("library/tiny", "latest").content
    assert raw == get_manifest(oci.url, "library/tiny", "latest").content


def test_ollamas_pull_flow_still_goes_through_the_mirror(node, oci, workdir, tmp_path):
    """Ollama's client: GET the manifest, HEAD each blob for its size, then GET it."""
    other = push_ollama_model(oci.url, "library/other", "latest",
                              gguf_path=write_llama_gguf(workdir / "other.gguf", name="other"))
    mirror = node(oci.url)
    layer = other["layers"]["application/vnd.ollama.image.model"]
    size = next(x["size"] for x in other["manifest"]["layers"] if x["digest"] == layer)
    before = mirror.http.head(f"{mirror.url}/v2/library/other/blobs/{layer}", timeout=30)
    assert before.status_code == 404  # no model of the data node names it: a pusher must send it
    got = mirror.http.get(f"{mirror.url}/v2/library/other/manifests/latest", headers={"Accept": MANIFEST_V2},
                          timeout=30)
    assert got.status_code == 200 and got.content == other["manifest_bytes"]
    head = mirror.http.head(f"{mirror.url}/v2/library/other/blobs/{layer}", timeout=30)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == size
    blob = mirror.http.get(f"{mirror.url}/v2/library/other/blobs/{layer}", timeout=30)
    assert blob.status_code == 200 and "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer


def test_an_import_of_a_model_the_mirror_knows_ends_with_every_blob_here(node, bundle, oci, tmp_path):
    """The data node mirrored the manifest (a pull began) but holds none of its blobs: a HEAD that says 200
    must not leave the import's manifest without them."""
    mirror = node(oci.url)
    got = mirror.manifest("library/tiny", "latest")
    assert got.status_code == 200
    done = imported(mirror, bundle, tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(mirror.manifest("library/tiny", "latest").content)
    for blob in [doc["config"], *doc["layers"]]:
        held = mirror.http.get(f"{mirror.url}/v2/library/tiny/blobs/{blob['digest']}", timeout=30)
        assert held.status_code == 200 and "sha256:" + hashlib.sha256(held.content).hexdigest() == blob["digest"]
