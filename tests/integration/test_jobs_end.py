"""Issue 12, jobs always end, over real processes: offline workers skipped and caught up, cancel, remove.

Controller and beat run with a 3 s offline grace and second-scale schedules; no test
calls the scheduled work itself, each sets up a situation and waits for the cluster.
"""

from __future__ import annotations

import json
import time

import pytest

from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import push_ollama_model
from testbed.processes import Service, eldric, wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.integration

GRACE = {"ELDRIC_OFFLINE_GRACE_SECONDS": "3"}
BEAT_ENV = {**GRACE, "ELDRIC_PIN_RECONCILE_SECONDS": "1", "ELDRIC_REAP_SECONDS": "1", "ELDRIC_STALE_WORKER_SECONDS": "3",
            "ELDRIC_INVENTORY_SYNC_SECONDS": "0", "ELDRIC_PIN_UPDATE_SECONDS": "0", "ELDRIC_PARTIAL_CLEAN_SECONDS": "0",
            "ELDRIC_BEAT_LOCK_SECONDS": "4"}


@pytest.fixture(scope="module")
def live(cluster, tiny_model):
    cluster.start_controller(**GRACE)
    beat = Service("beat-jobs", eldric("beat", "--loglevel", "INFO"), cluster.root, env=cluster.env(**BEAT_ENV)).start()
    cluster.services.append(beat)
    cluster.start_worker("stays", "inference")
    return cluster


def _job(live, job_id: str) -> dict:
    return live.api("GET", f"/api/v1/models/pull-jobs/{job_id}").json()


def _states(job: dict) -> dict[str, str]:
    return {w["worker"]: w["state"] for w in job["workers"]}


def _stored_state(live, job_id: str, worker: str) -> str | None:
    raw = live.redis.hget(f"eldric:job:{job_id}:workers", worker)
    return json.loads(raw)["state"] if raw else None


def _has_model(live, worker: str, model: str) -> bool:
    return any(m["name"] == model for m in live.api("GET", f"/api/v1/workers/{worker}/models").json()["models"])


def test_a_stopped_worker_is_skipped_after_the_grace_and_caught_up_when_it_returns(live):
    leaver = live.start_worker("leaves", "inference")
    leaver.stop()
    wait_until(lambda: not live.redis.exists("eldric:worker:leaves:alive"), timeout=15, message="leaves offline")
    job = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["stays", "leaves"]}).json()

    final = live.wait_job(job["id"], timeout=30)

    assert final["state"] == "completed_with_skipped", json.dumps(final, indent=1)
    assert _states(final) == {"stays": "completed", "leaves": "skipped"}
    assert final["summary"]["counts"] == {"completed": 1, "skipped": 1}
    # Beat's reaper persisted it (the job ends even when nobody reads it) and remembered the pull.
    wait_until(lambda: _stored_state(live, job["id"], "leaves") == "skipped", timeout=15,
               message=f"the reaper\n{live.logs()}")
    assert live.redis.hexists("eldric:worker:leaves:catchup", "tiny:latest")

    live.start_worker("leaves", "inference")

    wait_until(lambda: _has_model(live, "leaves", "tiny:latest"), timeout=40,
               message=f"the catch-up pull\n{live.logs()}")
    catch_ups = [j for j in live.api("GET", "/api/v1/models/pull-jobs?limit=50").json()["jobs"]
                 if j["options"].get("catch_up_of") == job["id"]]
    assert len(catch_ups) == 1 and catch_ups[0]["targets"] == ["leaves"]
    assert live.wait_job(catch_ups[0]["id"], timeout=20)["state"] == "completed"
    assert not live.redis.exists("eldric:worker:leaves:catchup")
    # The old queued task found its part final and did nothing; the first job stays as it ended.
    assert _job(live, job["id"])["state"] == "completed_with_skipped"


def test_cancel_mid_pull_stops_the_worker_and_removes_its_partial_data(live, oci, workdir):
    gguf = write_gguf_of_size(workdir / "slow.gguf", 24 << 20, name="slow")
    push_ollama_model(oci.url, "library/slow", "latest", gguf_path=gguf)
    proxy = ThrottlingProxy(oci.url, bytes_per_second=1 << 20)
    try:
        live.start_worker("slowpoke", "inference", ELDRIC_OLLAMA_REGISTRY=proxy.url, ELDRIC_PART_BYTES=str(4 << 20))
        job = live.api("POST", "/api/v1/models/pull", json={"model": "slow", "workers": ["slowpoke"]}).json()
        partial = live.store("slowpoke") / ".eldric-partial"
        wait_until(lambda: _job(live, job["id"])["workers"][0]["completed"] > 2 << 20, timeout=30,
                   interval=0.1, message="the download to be under way")
        assert any(p.name.startswith("sha256-") and not p.name.endswith(".lock") for p in partial.iterdir())

        resp = live.api("POST", f"/api/v1/models/pull-jobs/{job['id']}/cancel")

        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "cancelled" and _states(resp.json()) == {"slowpoke": "cancelled"}
        started = time.monotonic()
        wait_until(lambda: not [p for p in partial.iterdir() if not p.name.endswith(".lock")], timeout=10,
                   interval=0.1, message=f"the partial data to go\n{live.logs()}")
        assert time.monotonic() - started < 10
        served = proxy.bytes_served
        time.sleep(2)
        assert proxy.bytes_served - served < 1 << 20, "the worker kept downloading"
        assert not (live.store("slowpoke") / "manifests" / "registry.ollama.ai" / "library" / "slow").exists()
        assert live.api("POST", f"/api/v1/models/pull-jobs/{job['id']}/cancel").status_code == 409
        assert live.api("POST", "/api/v1/models/pull-jobs/nope/cancel").status_code == 404
    finally:
        proxy.close()


def test_remove_worker_refused_while_online_then_forgotten(live):
    worker = live.start_worker("retired", "inference")

    assert live.api("DELETE", "/api/v1/workers/retired").status_code == 409
    worker.stop()
    wait_until(lambda: not live.redis.exists("eldric:worker:retired:alive"), timeout=15, message="retired offline")
    assert live.api("DELETE", "/api/v1/workers/retired").status_code == 204

    assert live.api("GET", "/api/v1/workers/retired").status_code == 404
    assert "retired" not in [w["id"] for w in live.api("GET", "/api/v1/workers").json()["workers"]]
    assert live.api("DELETE", "/api/v1/workers/retired").status_code == 404
