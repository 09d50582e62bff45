"""Issue 21, finding 3: a delete of one tag while a pull of another tag sharing its blobs runs.

`tinyllama:v2` shares its model blob (and template, system, params) with `tinyllama:latest` and
adds a 3 MiB layer of its own. The node has `:latest`; a pull of `:v2` through a slow uplink finds
the shared blobs present and fetches the extra layer; meanwhile `:latest` is deleted. The delete
must spare the blobs the running pull counts on, and the pull must end with every blob of its
manifest on disk and the model in the inventory — never `completed` without its bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eldric.cluster import keys
from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import push_ollama_model
from testbed.processes import wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.integration

MANIFESTS = ("manifests", "registry.ollama.ai", "library", "tinyllama")
EXTRA = 3 << 20  # the v2-only layer: ~6 s at the proxy's rate, the window the delete lands in
RATE = 512 << 10


@pytest.fixture(scope="module")
def tags(oci, workdir) -> dict[str, dict]:
    gguf = write_llama_gguf(workdir / "tinyllama.gguf", name="tinyllama")
    latest = push_ollama_model(oci.url, "library/tinyllama", "latest", gguf_path=gguf)
    v2 = push_ollama_model(oci.url, "library/tinyllama", "v2", gguf_path=gguf,
                           license="v2 license " + "x" * EXTRA)
    return {"latest": latest, "v2": v2}


@pytest.fixture(scope="module")
def live(cluster, oci):
    proxy = ThrottlingProxy(oci.url, bytes_per_second=RATE)
    cluster.start_controller()
    # One connection per blob, so the extra layer arrives at the proxy's per-connection rate.
    cluster.start_worker("racer", ELDRIC_OLLAMA_REGISTRY=proxy.url, ELDRIC_DOWNLOAD_PARTS="1")
    yield cluster
    proxy.close()


def blob_path(store: Path, digest: str) -> Path:
    return store / "blobs" / digest.replace(":", "-")


def record(live, job_id: str) -> dict:
    return live.api("GET", f"/api/v1/models/pull-jobs/{job_id}").json()["workers"][0]


def test_a_delete_spares_the_blobs_a_running_pull_counts_on(live, tags):
    store = live.store("racer")
    first = live.api("POST", "/api/v1/models/pull", json={"model": "tinyllama", "workers": ["racer"]}).json()
    assert live.wait_job(first["id"])["state"] == "completed"
    v2 = tags["v2"]
    shared = tags["latest"]["layers"]["application/vnd.ollama.image.model"]
    extra = v2["layers"]["application/vnd.ollama.image.license"]
    assert shared == v2["layers"]["application/vnd.ollama.image.model"]
    assert blob_path(store, shared).is_file()

    job = live.api("POST", "/api/v1/models/pull", json={"model": "tinyllama:v2", "workers": ["racer"]}).json()

    def fetching_the_extra_layer():
        r = record(live, job["id"])
        return r if r.get("layer") == extra and r["state"] == "pulling" else None
    wait_until(fetching_the_extra_layer, timeout=30, interval=0.05, message=f"v2 on its extra layer\n{live.logs()}")

    delete = live.api("POST", "/api/v1/models/delete", json={"model": "tinyllama", "workers": ["racer"]}).json()
    deleted = live.wait_job(delete["id"], timeout=30)
    assert deleted["state"] == "completed", json.dumps(deleted, indent=1)
    assert not store.joinpath(*MANIFESTS, "latest").exists()  # the delete did happen ...
    assert record(live, job["id"])["state"] == "pulling"  # ... while the v2 pull was still running,
    assert blob_path(store, shared).is_file(), "the delete removed a blob the running v2 pull counts on"

    final = live.wait_job(job["id"], timeout=60)
    rec = final["workers"][0]
    assert final["state"] == "completed", json.dumps(final, indent=1)
    assert store.joinpath(*MANIFESTS, "v2").read_bytes() == v2["manifest_bytes"]
    for blob in (v2["manifest"]["config"], *v2["manifest"]["layers"]):
        path = blob_path(store, blob["digest"])
        assert path.is_file() and path.stat().st_size == blob["size"], f"{blob['digest']} missing after completed"
    inventory = live.redis.hgetall(keys.worker_models("racer"))
    assert "tinyllama:v2" in inventory and "tinyllama:latest" not in inventory, sorted(inventory)
    # The shared blobs were reused, not fetched again after the delete: only what :latest lacks moved.
    had = {b["digest"] for b in (tags["latest"]["manifest"]["config"], *tags["latest"]["manifest"]["layers"])}
    new = sum(b["size"] for b in (v2["manifest"]["config"], *v2["manifest"]["layers"]) if b["digest"] not in had)
    assert rec["transferred"] == new, rec
    # Nothing pins the blobs once the pull ended: deleting v2 now frees them all.
    gone = live.wait_job(live.api("POST", "/api/v1/models/delete",
                                  json={"model": "tinyllama:v2", "workers": ["racer"]}).json()["id"])
    assert gone["state"] == "completed"
    assert not list((store / "blobs").glob("sha256-*")), sorted(p.name for p in (store / "blobs").iterdir())
