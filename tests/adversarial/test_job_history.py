"""The job history bound counts unfinished jobs too (issue 21, finding 12).

With `ELDRIC_JOB_HISTORY_MAX=10`, the issue kept 16 jobs while 15 waited on a stopped worker. Here a
real controller, redis-server and two agents: "busy" is downloading a model through a slow proxy, "gone"
was stopped, and 15 more pulls wait on "gone". At most 10 jobs may stay. The bound drops finished jobs
first; past them, the oldest unfinished ones are cancelled through the job store before they are
forgotten, so no agent keeps working on a job nobody can see or cancel: "busy" stops its download and
deletes its partial data as it does on a cancel.
"""

from __future__ import annotations

import json
import time

import pytest

from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import push_ollama_model
from testbed.processes import wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.integration

HISTORY_MAX = 10


@pytest.fixture(scope="module")
def live(cluster, tiny_model):
    cluster.start_controller(ELDRIC_JOB_HISTORY_MAX=str(HISTORY_MAX))
    gone = cluster.start_worker("gone", "inference")
    gone.stop()
    wait_until(lambda: not cluster.redis.exists("eldric:worker:gone:alive"), timeout=15, message="gone offline")
    return cluster


def pull(live, model: str, worker: str) -> str:
    resp = live.api("POST", "/api/v1/models/pull", json={"model": model, "workers": [worker]})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def test_unfinished_jobs_count_and_the_dropped_ones_stop_their_agents(live, oci, workdir):
    gguf = write_gguf_of_size(workdir / "history.gguf", 8 << 20, name="history")
    push_ollama_model(oci.url, "library/history", "latest", gguf_path=gguf)
    proxy = ThrottlingProxy(oci.url, bytes_per_second=512 << 10)
    try:
        live.start_worker("busy", "inference", ELDRIC_OLLAMA_REGISTRY=proxy.url, ELDRIC_PART_BYTES=str(2 << 20))
        running = pull(live, "history", "busy")
        partial = live.store("busy") / ".eldric-partial"
        wait_until(lambda: live.api("GET", f"/api/v1/models/pull-jobs/{running}").json()["workers"][0]["completed"]
                   > 512 << 10, timeout=30, interval=0.1, message=f"the download to be under way\n{live.logs()}")

        waiting = [pull(live, "tiny", "gone") for _ in range(15)]

        listed = live.api("GET", "/api/v1/models/pull-jobs?limit=100").json()
        assert listed["total"] <= HISTORY_MAX, f"{listed['total']} jobs kept, at most {HISTORY_MAX} allowed"
        assert [j["id"] for j in listed["jobs"]] == list(reversed(waiting[-HISTORY_MAX:]))  # the newest stay
        assert all(j["state"] == "pending" for j in listed["jobs"])
        for dropped in [running, *waiting[:-HISTORY_MAX]]:
            assert live.api("GET", f"/api/v1/models/pull-jobs/{dropped}").status_code == 404
            assert not live.redis.exists(f"eldric:job:{dropped}")

        # The running pull was cancelled before it was forgotten: its agent stops and cleans up.
        wait_until(lambda: not [p for p in partial.iterdir() if not p.name.endswith(".lock")], timeout=10,
                   interval=0.1, message=f"busy's partial data to go\n{live.logs()}")
        served = proxy.bytes_served
        time.sleep(2)
        assert proxy.bytes_served - served < 512 << 10, "busy kept downloading a job nobody can see"
        assert not (live.store("busy") / "manifests" / "registry.ollama.ai" / "library" / "history").exists()
        # What the agent was refused over: its cancelled record, kept a while for that, then expiring.
        record = json.loads(live.redis.hget(f"eldric:job:{running}:workers", "busy"))
        assert record["state"] == "cancelled"
        assert 0 < live.redis.ttl(f"eldric:job:{running}:workers") <= 3600
        assert "dropped from the job history" in live.logs()

        # The stopped worker comes back: it skips the dropped jobs' queued tasks and runs the kept ones.
        returned = live.start_worker("gone", "inference")
        for kept in waiting[-HISTORY_MAX:]:
            assert live.wait_job(kept, timeout=60)["state"] == "completed"
        wait_until(lambda: returned.log_path.read_text().count("job no longer exists") == 15 - HISTORY_MAX,
                   timeout=20, message=f"gone to skip the dropped jobs\n{returned.log_tail()}")
        for dropped in waiting[:-HISTORY_MAX]:
            assert json.loads(live.redis.hget(f"eldric:job:{dropped}:workers", "gone"))["state"] == "cancelled"
    finally:
        proxy.close()
