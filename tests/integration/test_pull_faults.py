"""Faults during pulls: SIGKILL and resume, offline workers, unreachable registry."""

from __future__ import annotations

import json
import re

import pytest

from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import push_ollama_model
from testbed.processes import free_port, wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(cluster):
    cluster.start_controller()
    return cluster


def _job(live, job_id: str) -> dict:
    return live.api("GET", f"/api/v1/models/pull-jobs/{job_id}").json()


def _worker(job: dict, name: str) -> dict:
    return next(w for w in job["workers"] if w["worker"] == name)


def test_worker_killed_mid_download_resumes_after_restart(live, oci, workdir):
    size = 40 << 20
    gguf = write_gguf_of_size(workdir / "big.gguf", size, name="big")
    pushed = push_ollama_model(oci.url, "library/big", "latest", gguf_path=gguf)
    blob_size = gguf.stat().st_size
    proxy = ThrottlingProxy(oci.url, bytes_per_second=2 << 20)  # up to 8 connections of 2 MB/s each
    try:
        env = {"ELDRIC_OLLAMA_REGISTRY": proxy.url, "ELDRIC_PART_BYTES": str(4 << 20)}
        worker = live.start_worker("crashy", "inference", **env)
        job = live.api("POST", "/api/v1/models/pull", json={"model": "big", "workers": ["crashy"]}).json()
        at_kill = wait_until(lambda: (r := _worker(_job(live, job["id"]), "crashy"))["completed"] > blob_size * 0.5 and r,
                             timeout=30, interval=0.1, message="half of the blob")
        worker.kill()
        assert at_kill["state"] == "pulling"
        partial = live.store("crashy") / ".eldric-partial"
        assert list(partial.glob("sha256-*.json")), "resume state must survive the crash"
        assert not (live.store("crashy") / "manifests" / "registry.ollama.ai" / "library" / "big").exists()

        proxy.reset_counters()
        live.start_worker("crashy", "inference", **env)
        final = live.wait_job(job["id"], timeout=60)
        assert final["state"] == "completed", json.dumps(final, indent=1)
        # Only the missing bytes travel again (the state file lags the data by at most ~1 s).
        assert proxy.bytes_served < blob_size * 0.8, (proxy.bytes_served, blob_size)
        assert any(r and not r.startswith("bytes=0-") for _, r in proxy.requests)
        model_digest = pushed["layers"]["application/vnd.ollama.image.model"]
        blob = live.store("crashy") / "blobs" / model_digest.replace(":", "-")
        assert blob.read_bytes() == gguf.read_bytes()
    finally:
        proxy.close()


def test_offline_worker_gets_its_task_when_it_returns(live, tiny_model):
    worker = live.start_worker("sleepy", "inference")
    worker.stop()
    wait_until(lambda: not live.redis.exists("eldric:worker:sleepy:alive"), timeout=10, message="sleepy offline")
    job = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["sleepy"]}).json()
    assert _worker(_job(live, job["id"]), "sleepy")["state"] == "offline"
    live.start_worker("sleepy", "inference")
    final = live.wait_job(job["id"], timeout=30)
    assert _worker(final, "sleepy")["state"] == "completed"


def test_offline_worker_is_failed_when_the_deadline_passes(live, tiny_model):
    worker = live.start_worker("gone", "inference")
    worker.stop()
    wait_until(lambda: not live.redis.exists("eldric:worker:gone:alive"), timeout=10, message="gone offline")
    job = live.api("POST", "/api/v1/models/pull",
                   json={"model": "tiny", "workers": ["gone"], "deadline_seconds": 10}).json()
    assert job["workers"][0]["state"] == "offline"
    final = live.wait_job(job["id"], timeout=20)
    assert final["state"] == "failed"
    assert "deadline" in final["workers"][0]["error"] and "offline" in final["workers"][0]["error"]


def test_unreachable_registry_is_retried_then_failed_with_the_reason(live):
    live.start_worker("lonely", "inference", ELDRIC_OLLAMA_REGISTRY=f"http://127.0.0.1:{free_port()}")
    job = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["lonely"]}).json()
    seen = set()

    def done():
        j = _job(live, job["id"])
        seen.add(_worker(j, "lonely")["state"])
        return j if j["state"] in ("completed", "failed") else None

    final = wait_until(done, timeout=30, interval=0.05, message="retries to run out")
    w = _worker(final, "lonely")
    assert w["state"] == "failed" and w["error"].endswith(": connection refused"), w
    assert w["error"].startswith("cannot reach 127.0.0.1:"), w
    assert "retrying" in seen


def test_workers_come_back_after_redis_restarts_empty_and_pulls_still_work(live, redis_server, tiny_model):
    live.start_worker("phoenix", "inference")
    redis_server.stop()
    redis_server.start()  # same port, no persistence: every record is gone

    def phoenix_online():
        workers = {w["id"]: w for w in live.api("GET", "/api/v1/workers").json()["workers"]}
        return "phoenix" in workers and workers["phoenix"]["online"]
    wait_until(phoenix_online, timeout=30, message=f"phoenix to re-register\n{live.logs()}")
    job = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["phoenix"]}).json()
    assert live.wait_job(job["id"], timeout=60)["state"] == "completed"
    assert [m["name"] for m in live.api("GET", "/api/v1/workers/phoenix/models").json()["models"]] == ["tiny:latest"]


def test_a_worker_without_the_disk_space_fails_before_downloading(live, tiny_model):
    live.start_worker("cramped", "inference", ELDRIC_DISK_RESERVE_BYTES=str(1 << 60))
    job = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["cramped"]}).json()
    final = live.wait_job(job["id"], timeout=30)
    assert final["state"] == "failed", final
    assert re.fullmatch(r"no space left on .+ for tiny:latest: needs [\d.]+ KiB \+ 1048576\.00 TiB reserve, has .+",
                        final["workers"][0]["error"]), final["workers"][0]["error"]
    assert not list((live.store("cramped") / "blobs").glob("sha256-*"))


def test_api_token_is_required_when_set(cluster):
    url = cluster.start_controller(ELDRIC_API_TOKEN="s3cret")
    resp = cluster.http.get(f"{url}/api/v1/workers", timeout=5)
    assert resp.status_code == 401 and resp.json()["code"] == 401
    ok = cluster.http.get(f"{url}/api/v1/workers", headers={"Authorization": "Bearer s3cret"}, timeout=5)
    assert ok.status_code == 200
    assert cluster.http.get(f"{url}/healthz", timeout=5).status_code == 200
