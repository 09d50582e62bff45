"""Cluster-wide pull over real processes: Redis, docker-registry, controller, four agents."""

from __future__ import annotations

import hashlib
import json

import pytest

from testbed.oci_registry import blob_data_path, push_ollama_model
from testbed.gguf_models import write_llama_gguf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(mixed_cluster):
    return mixed_cluster


def test_workers_are_listed_with_type_address_and_online_state(live):
    body = live.api("GET", "/api/v1/workers").json()
    by_id = {w["id"]: w for w in body["workers"]}
    assert set(by_id) >= {"inf-a", "inf-b", "cloud-a", "data-a"}
    assert by_id["data-a"]["type"] == "data" and by_id["cloud-a"]["type"] == "cloud"
    assert all(by_id[w]["online"] for w in ("inf-a", "inf-b", "cloud-a", "data-a"))
    assert by_id["inf-a"]["address"].startswith("http://127.0.0.1:")
    assert by_id["inf-a"]["free_disk"] > 0 and by_id["inf-a"]["backends"] == ["ollama"]
    assert live.http.get(by_id["inf-a"]["address"] + "/healthz", timeout=5).json()["worker"] == "inf-a"


def test_pull_reaches_every_inference_and_cloud_worker_and_no_other(live, tiny_model):
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "tiny"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert sorted(job["targets"]) == ["cloud-a", "inf-a", "inf-b"]
    assert job["state"] in ("pending", "running")
    seen_states: set[str] = set()

    def poll():
        j = live.api("GET", f"/api/v1/models/pull-jobs/{job['id']}").json()
        seen_states.update(w["state"] for w in j["workers"])
        return j if j["state"] in ("completed", "failed") else None

    from testbed.processes import wait_until
    final = wait_until(poll, timeout=60, interval=0.05, message="pull to finish")
    assert final["state"] == "completed", json.dumps(final, indent=1)
    assert {w["worker"]: w["state"] for w in final["workers"]} == {w: "completed" for w in ("cloud-a", "inf-a", "inf-b")}
    assert all(w["percent"] == 100.0 and w["completed"] == w["total"] > 0 for w in final["workers"])
    assert "completed" in seen_states

    manifest = tiny_model["manifest"]
    for node in ("inf-a", "inf-b", "cloud-a"):
        store = live.store(node)
        manifest_file = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
        assert manifest_file.read_bytes() == tiny_model["manifest_bytes"]
        for blob in [manifest["config"], *manifest["layers"]]:
            path = store / "blobs" / blob["digest"].replace(":", "-")
            upstream = blob_data_path(live.oci.root, blob["digest"]).read_bytes()
            assert path.read_bytes() == upstream
            assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == blob["digest"]
        assert not list((store / ".eldric-partial").glob("sha256-*[0-9a-f]"))
    data_store = live.store("data-a")
    assert not list(data_store.glob("manifests/**/latest")) and not list(data_store.glob("blobs/sha256-*"))

    models = live.api("GET", "/api/v1/workers/inf-a/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny:latest"]
    listing = live.api("GET", "/api/v1/models/pull-jobs").json()
    assert listing["jobs"][0]["id"] == job["id"]


def test_unknown_model_is_refused_once_before_any_worker_is_asked(live):
    """Issue 22, finding 5: the controller asks upstream first; a typo no longer fails every worker alike."""
    before = live.api("GET", "/api/v1/models/pull-jobs").json()["total"]
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "does-not-exist:1b"})
    assert resp.status_code == 404, resp.text
    assert resp.json()["message"] == (f"model 'does-not-exist:1b' not found at {live.oci.url}: "
                                      "it has no model does-not-exist")
    assert live.api("GET", "/api/v1/models/pull-jobs").json()["total"] == before


def test_corrupted_blob_fails_with_digest_mismatch_and_leaves_nothing_visible(live, oci, workdir):
    gguf = write_llama_gguf(workdir / "bad.gguf", name="bad", width=96)
    pushed = push_ollama_model(oci.url, "library/broken", "v1", gguf_path=gguf)
    from testbed.oci_registry import corrupt_blob
    corrupt_blob(oci.root, pushed["layers"]["application/vnd.ollama.image.model"])
    job = live.api("POST", "/api/v1/models/pull", json={"model": "broken:v1", "workers": ["inf-a"]}).json()
    final = live.wait_job(job["id"])
    assert final["state"] == "failed"
    assert "digest mismatch" in final["workers"][0]["error"]
    store = live.store("inf-a")
    assert not (store / "manifests" / "registry.ollama.ai" / "library" / "broken").exists()
    model_digest = pushed["layers"]["application/vnd.ollama.image.model"].replace(":", "-")
    assert not (store / "blobs" / model_digest).exists()
    assert not (store / ".eldric-partial" / model_digest).exists()


@pytest.mark.parametrize("body, status, field", [
    ({"model": 5}, 422, "model"),
    ({}, 422, "model"),
    ({"model": "tiny", "color": "red"}, 422, "color"),
    ({"model": "../../etc/passwd"}, 400, "model"),
    ({"model": "/etc/passwd"}, 400, "model"),
    ({"model": "a\\b"}, 400, "model"),
    ({"model": "tiny\x00"}, 400, "model"),
    ({"model": "x" * 600}, 400, "model"),
    ({"model": "tiny", "workers": ["data-a"]}, 400, "workers"),
])
def test_bad_pull_requests_get_json_errors_naming_the_field(live, body, status, field):
    resp = live.api("POST", "/api/v1/models/pull", json=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert field in json.dumps(resp.json()["errors"])


def test_unknown_worker_and_job_are_404_and_malformed_json_is_400(live):
    resp = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["nope"]})
    assert resp.status_code == 404 and "nope" in resp.json()["message"]
    assert live.api("GET", "/api/v1/models/pull-jobs/doesnotexist").status_code == 404
    resp = live.api("POST", "/api/v1/models/pull", data="{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["code"] == 400


def test_a_pull_task_sent_straight_to_a_data_worker_is_refused(live):
    """Defence in depth: even a task that bypasses the controller's routing is refused by the agent."""
    from eldric.cluster.dispatch import create_producer
    from eldric.cluster.jobs.store import create_job
    from eldric.cluster.queues import TASK_PULL, worker_queue

    job_id = create_job(live.redis, kind="pull", model="tiny:latest", targets=["data-a"], source="ollama",
                        deadline_seconds=60)
    create_producer(live.redis_server.url).send_task(TASK_PULL, args=[job_id, "tiny:latest"],
                                                     queue=worker_queue("data-a"))
    final = live.wait_job(job_id)
    assert final["state"] == "failed"
    assert "do not take model work" in final["workers"][0]["error"]
    assert not list(live.store("data-a").glob("blobs/sha256-*"))
