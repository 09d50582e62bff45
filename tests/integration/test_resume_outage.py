"""Issue 22, finding 4, over real processes: a worker back from an outage resumes its partial download, and
every view counts only the bytes that crossed the network (`transferred`, `upstream_bytes`; `resumed_bytes`
for what was on disk). SIGTERM stops a download at once and keeps the partial.

Redis, docker-registry behind a byte-counting proxy (tests/support/throttle.py), a controller and beat with
second-scale schedules (reaper, catch-ups, partial cleanup every second) whose tasks an agent that stays up
runs, agents capped at 4 MiB/s so a
16 MiB model takes ~4 s. Each test has its own model and agent, SIGKILLed or SIGTERMed mid-pull and started
again on the same data directory.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import push_ollama_model
from testbed.processes import Service, eldric, wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.integration

MIB = 1 << 20
RATE = "4M"
# Silent 3 s mid-pull fails a part before 6 s offline would skip it: the killed worker's part ends failed.
GRACE = {"ELDRIC_OFFLINE_GRACE_SECONDS": "6", "ELDRIC_STALE_WORKER_SECONDS": "3"}
BEAT_ENV = {**GRACE, "ELDRIC_PIN_RECONCILE_SECONDS": "1", "ELDRIC_REAP_SECONDS": "1",
            "ELDRIC_INVENTORY_SYNC_SECONDS": "0", "ELDRIC_PIN_UPDATE_SECONDS": "0",
            "ELDRIC_PARTIAL_CLEAN_SECONDS": "1", "ELDRIC_BEAT_LOCK_SECONDS": "4"}


@pytest.fixture(scope="module")
def proxy(oci):
    p = ThrottlingProxy(oci.url, bytes_per_second=256 * MIB)  # counts; the agents' own cap sets the pace
    yield p
    p.close()


@pytest.fixture(scope="module")
def live(cluster, proxy):
    cluster.start_controller(**GRACE)
    beat = Service("beat-resume", eldric("beat", "--loglevel", "INFO"), cluster.root,
                   env=cluster.env(**BEAT_ENV)).start()
    cluster.services.append(beat)
    cluster.start_worker("stays", "inference")  # runs beat's maintenance tasks while the tested agent is away
    return cluster


def push(oci, workdir: Path, name: str) -> dict:
    gguf = write_gguf_of_size(workdir / f"{name}.gguf", 16 * MIB, name=name)
    pushed = push_ollama_model(oci.url, f"library/{name}", "latest", gguf_path=gguf)
    gguf.unlink()
    return pushed


def start_agent(live, proxy, name: str) -> Service:
    return live.start_worker(name, "inference", ELDRIC_OLLAMA_REGISTRY=proxy.url, ELDRIC_MAX_DOWNLOAD_RATE=RATE)


def job(live, job_id: str) -> dict:
    return live.api("GET", f"/api/v1/models/pull-jobs/{job_id}").json()


def record(live, job_id: str) -> dict:
    return job(live, job_id)["workers"][0]


def saved_bytes(live, worker: str) -> int:
    """What the partial download's resume state says is on disk."""
    states = list((live.store(worker) / ".eldric-partial").glob("sha256-*.json"))
    return sum(c for s in states for _, _, c in json.loads(s.read_text())["parts"])


def stored_blobs(live, worker: str) -> int:
    """Bytes of the whole blobs in the worker's store (the model's small layers may be done already)."""
    return sum(p.stat().st_size for p in (live.store(worker) / "blobs").glob("sha256-*"))


def under_way(live, job_id: str, at_least: int) -> None:
    wait_until(lambda: record(live, job_id)["completed"] >= at_least, timeout=20, interval=0.05,
               message=f"the pull to pass {at_least} bytes\n{live.logs()}")


def assert_counted_truly(rec: dict, resumed: int, whole: int, served: int, manifest_bytes: int) -> None:
    """Bytes on disk (`resumed` in a partial, `whole` in finished blobs) are not counted as moved;
    `transferred` and `upstream_bytes` are what the uplink sent."""
    assert rec["state"] == "completed", rec
    assert rec["resumed_bytes"] == resumed, rec
    assert rec["completed"] == rec["total"], rec
    assert rec["transferred"] == rec["total"] - resumed - whole, rec
    assert rec["upstream_bytes"] == rec["transferred"] and rec["peer_bytes"] == 0, rec
    assert served - manifest_bytes == rec["transferred"], (served, rec)


def test_a_worker_killed_mid_pull_resumes_its_partial_on_the_catch_up_and_counts_only_new_bytes(live, proxy, oci,
                                                                                            workdir):
    pushed = push(oci, workdir, "outage")
    agent = start_agent(live, proxy, "returns")
    first = live.api("POST", "/api/v1/models/pull", json={"model": "outage", "workers": ["returns"]}).json()["id"]
    under_way(live, first, 6 * MIB)
    agent.kill()
    resumed, whole = saved_bytes(live, "returns"), stored_blobs(live, "returns")
    assert resumed >= 4 * MIB

    # Beat fails the silent part and remembers it; the partial cleanup (every second) leaves the partial alone.
    wait_until(lambda: live.redis.hexists("eldric:worker:returns:catchup", "outage:latest"), timeout=20,
               message=f"the reaper to record a catch-up\n{live.logs()}")
    assert "went offline mid-pull" in (record(live, first)["error"] or ""), record(live, first)
    proxy.reset_counters()
    start_agent(live, proxy, "returns")

    def catch_up() -> dict | None:
        jobs = live.api("GET", "/api/v1/models/pull-jobs?limit=50").json()["jobs"]
        found = [j for j in jobs if j["options"].get("catch_up_of") == first]
        return found[0] if found and found[0]["state"] in ("completed", "failed") else None
    again = wait_until(catch_up, timeout=30, interval=0.2, message=f"the catch-up\n{live.logs()}")
    rec = job(live, again["id"])["workers"][0]

    assert_counted_truly(rec, resumed, whole, proxy.bytes_served, len(pushed["manifest_bytes"]))
    assert rec["transferred"] <= rec["total"] - 4 * MIB  # finding 4: the whole model was shown as transferred
    summary = job(live, again["id"])["summary"]
    assert summary["resumed_bytes"] == resumed and summary["upstream_bytes"] == rec["upstream_bytes"], summary
    # /metrics: the bytes that crossed the network, not the model's size (the killed part had not reported any)
    metrics = live.http.get(f"{live.controller_url}/metrics", timeout=10).text
    pulled = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("eldric_pulled_bytes{"))
    assert pulled == rec["transferred"], [ln for ln in metrics.splitlines() if "pulled_bytes" in ln]


def test_sigterm_stops_the_download_at_once_keeps_the_partial_and_the_next_start_resumes_it(live, proxy, oci,
                                                                                            workdir):
    pushed = push(oci, workdir, "sigterm")
    agent = start_agent(live, proxy, "stops")
    job_id = live.api("POST", "/api/v1/models/pull", json={"model": "sigterm", "workers": ["stops"]}).json()["id"]
    under_way(live, job_id, 6 * MIB)
    at_term = record(live, job_id)["completed"]
    os.killpg(agent.proc.pid, signal.SIGTERM)
    started = time.monotonic()
    agent.proc.wait(15)
    took = time.monotonic() - started

    kept, whole = saved_bytes(live, "stops"), stored_blobs(live, "stops")
    # Celery's warm shutdown waited for the download (~4.5 s more here, 31 s+ on the site); now the download
    # stops at its next read, within a progress interval (0.25 s at 4 MiB/s is 1 MiB; the record lags as long).
    assert kept and kept - at_term <= 2 * MIB, (at_term, kept)
    assert took < 3.0, f"the agent took {took:.1f} s to stop\n{agent.log_tail()}"
    assert not (live.store("stops") / "manifests" / "registry.ollama.ai" / "library" / "sigterm").exists()

    proxy.reset_counters()
    start_agent(live, proxy, "stops")

    def done() -> dict | None:
        """The job's own part, resumed by the restart, or its catch-up when beat failed the part first."""
        jobs = live.api("GET", "/api/v1/models/pull-jobs?limit=50").json()["jobs"]
        ours = [j for j in jobs if j["id"] == job_id or j["options"].get("catch_up_of") == job_id]
        recs = [job(live, j["id"])["workers"][0] for j in ours]
        return next((r for r in recs if r["state"] == "completed"), None)
    rec = wait_until(done, timeout=30, interval=0.2, message=f"the resumed pull\n{live.logs()}")

    assert_counted_truly(rec, kept, whole, proxy.bytes_served, len(pushed["manifest_bytes"]))
