"""Celery beat's scheduled work over real processes: pins, upstream updates, inventory sync, reaper, one beat.

Beat runs with second-scale schedules (environment variables, as in production);
the agents consume the shared maintenance queue. No test calls an API to trigger
the scheduled work: each only sets up a situation and waits for the cluster to act.
"""

from __future__ import annotations

import json
import shutil

import pytest

from testbed.gguf_models import write_gguf_of_size, write_llama_gguf
from testbed.oci_registry import push_ollama_model
from testbed.processes import Service, eldric, wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.integration

BEAT_ENV = {
    "ELDRIC_PIN_RECONCILE_SECONDS": "1",
    "ELDRIC_PIN_UPDATE_SECONDS": "2",
    "ELDRIC_INVENTORY_SYNC_SECONDS": "1",
    "ELDRIC_REAP_SECONDS": "1",
    "ELDRIC_STALE_WORKER_SECONDS": "3",
    "ELDRIC_PIN_RETRY_SECONDS": "5",
    "ELDRIC_BEAT_LOCK_SECONDS": "4",
}


def start_beat(cluster, name: str) -> Service:
    svc = Service(name, eldric("beat", "--loglevel", "INFO"), cluster.root, env=cluster.env(**BEAT_ENV)).start()
    cluster.services.append(svc)
    return svc


@pytest.fixture(scope="module")
def ops(cluster, tiny_model):
    cluster.start_controller()
    cluster.beat = start_beat(cluster, "beat-1")
    cluster.start_worker("keeper", "inference")
    cluster.start_worker("data-a", "data")
    wait_until(lambda: "Sending due task" in cluster.beat.log_tail(200), timeout=30,
               message=f"beat to schedule\n{cluster.beat.log_tail()}")
    return cluster


def models_of(live, worker: str) -> dict[str, dict]:
    return {m["name"]: m for m in live.api("GET", f"/api/v1/workers/{worker}/models").json()["models"]}


def jobs_for(live, model: str) -> list[dict]:
    return [j for j in live.api("GET", "/api/v1/models/pull-jobs?limit=200").json()["jobs"] if j["model"] == model]


def test_pinned_model_reaches_every_eligible_worker_and_one_that_joins_later(ops, tiny_model):
    resp = ops.api("POST", "/api/v1/pins", json={"model": "tiny"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["model"] == "tiny:latest" and resp.json()["workers"] is None
    wait_until(lambda: "tiny:latest" in models_of(ops, "keeper"), timeout=45,
               message=f"the pin to reach keeper\n{ops.logs()}")

    ops.start_worker("newbie", "inference")  # no API call from here on
    wait_until(lambda: "tiny:latest" in models_of(ops, "newbie"), timeout=45,
               message=f"the pin to reach the new worker\n{ops.logs()}")
    manifest = ops.store("newbie") / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    assert manifest.read_bytes() == tiny_model["manifest_bytes"]

    pin = ops.api("GET", "/api/v1/pins/tiny:latest").json()
    assert sorted(pin["coverage"]["present"]) == ["keeper", "newbie"] and not pin["coverage"]["missing"]
    assert "data-a" not in json.dumps(pin["coverage"])
    assert not models_of(ops, "data-a")
    pin_jobs = [j for j in jobs_for(ops, "tiny:latest") if j["options"].get("pin") == "tiny:latest"]
    assert any(j["targets"] == ["newbie"] and j["state"] == "completed" for j in pin_jobs), pin_jobs

    listing = ops.api("GET", "/api/v1/pins").json()
    assert [p["model"] for p in listing["pins"]] == ["tiny:latest"] and listing["total"] == 1
    assert ops.api("DELETE", "/api/v1/pins/tiny").status_code == 204
    assert ops.api("GET", "/api/v1/pins/tiny").status_code == 404
    assert ops.api("DELETE", "/api/v1/pins/tiny").status_code == 404
    assert "tiny:latest" in models_of(ops, "newbie")  # unpinning removes nothing


def test_auto_update_pin_repulls_when_the_tag_moves_upstream(ops, oci, workdir):
    v1 = push_ollama_model(oci.url, "library/moving", "latest",
                           gguf_path=write_llama_gguf(workdir / "moving1.gguf", name="moving1"))
    resp = ops.api("POST", "/api/v1/pins", json={"model": "moving", "workers": ["keeper"], "auto_update": True})
    assert resp.status_code == 201, resp.text
    wait_until(lambda: models_of(ops, "keeper").get("moving:latest", {}).get("digest") == v1["manifest_digest"],
               timeout=45, message=f"v1 on keeper\n{ops.logs()}")

    v2 = push_ollama_model(oci.url, "library/moving", "latest",
                           gguf_path=write_llama_gguf(workdir / "moving2.gguf", name="moving2", width=96))
    assert v2["manifest_digest"] != v1["manifest_digest"]
    wait_until(lambda: models_of(ops, "keeper").get("moving:latest", {}).get("digest") == v2["manifest_digest"],
               timeout=45, message=f"v2 to replace v1 on keeper\n{ops.logs()}")
    model_blob = v2["layers"]["application/vnd.ollama.image.model"].replace(":", "-")
    assert (ops.store("keeper") / "blobs" / model_blob).exists()
    assert "moving:latest" not in models_of(ops, "newbie")  # the pin names keeper only
    pin = ops.api("GET", "/api/v1/pins/moving").json()
    assert pin["upstream_digest"] == v2["manifest_digest"] and pin["check_error"] is None
    assert any(j["options"].get("reason") == "update" for j in jobs_for(ops, "moving:latest"))
    assert ops.api("DELETE", "/api/v1/pins/moving").status_code == 204


def test_inventory_sync_notices_models_added_and_removed_by_hand(ops):
    store = ops.store("keeper")
    src = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    dest = store / "manifests" / "registry.ollama.ai" / "library" / "handmade" / "latest"
    dest.parent.mkdir(parents=True)
    shutil.copy(src, dest)
    wait_until(lambda: "handmade:latest" in models_of(ops, "keeper"), timeout=30,
               message="the hand-made model in keeper's inventory")
    dest.unlink()
    wait_until(lambda: "handmade:latest" not in models_of(ops, "keeper"), timeout=30,
               message="the removed model to leave keeper's inventory")


def test_reaper_fails_a_worker_killed_mid_pull_and_the_job_finishes(ops, oci, workdir):
    gguf = write_gguf_of_size(workdir / "slow.gguf", 8 << 20, name="slow")
    push_ollama_model(oci.url, "library/slow", "latest", gguf_path=gguf)
    proxy = ThrottlingProxy(oci.url, bytes_per_second=256 << 10)
    try:
        worker = ops.start_worker("crashy", "inference", ELDRIC_OLLAMA_REGISTRY=proxy.url,
                                  ELDRIC_PART_BYTES=str(1 << 20))
        job = ops.api("POST", "/api/v1/models/pull", json={"model": "slow", "workers": ["crashy"]}).json()

        def record() -> dict:
            return json.loads(ops.redis.hget(f"eldric:job:{job['id']}:workers", "crashy"))

        wait_until(lambda: record()["state"] == "pulling" and record()["completed"] > 0, timeout=30,
                   message="crashy to start pulling")
        worker.kill()  # and never restarted
        # Read Redis, not the API: the reaper must persist the end without anyone reading the job.
        final = wait_until(lambda: (r := record())["state"] == "failed" and r, timeout=30,
                           message=f"the reaper to fail crashy\n{ops.logs()}")
        assert "offline mid-pull" in final["error"], final
        assert job["id"] not in ops.redis.smembers("eldric:worker:crashy:jobs")
        assert ops.api("GET", f"/api/v1/models/pull-jobs/{job['id']}").json()["state"] == "failed"
    finally:
        proxy.close()


def test_only_one_beat_schedules_and_a_second_takes_over_when_it_dies(ops):
    standby = start_beat(ops, "beat-2")
    wait_until(lambda: "beat: Starting" in standby.log_tail(200), timeout=20, message="the second beat to start")
    sent_before = ops.beat.log_tail(100000).count("Sending due task")
    wait_until(lambda: ops.beat.log_tail(100000).count("Sending due task") > sent_before + 3, timeout=20,
               message="the first beat to keep scheduling")
    assert "Sending due task" not in standby.log_tail(100000)
    assert "Acquired lock" not in standby.log_tail(100000)

    ops.beat.kill()
    wait_until(lambda: "Sending due task" in standby.log_tail(100000), timeout=30,
               message=f"the second beat to take over\n{standby.log_tail()}")
