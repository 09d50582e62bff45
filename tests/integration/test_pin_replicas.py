"""A pin with replicas over real processes (issue 25): beat's reconcile keeps N serving copies.

Three inference agents, a controller and beat reconciling every second. A pin of replicas=2 puts the
model on two of them (placement chooses; nothing says which); removing one of those (agent stopped,
then DELETE /api/v1/workers/{id}) makes the next reconcile place the copy on the third.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
import time

import pytest

from testbed.processes import Service, eldric, wait_until

pytestmark = pytest.mark.integration

WORKERS = ("rep-a", "rep-b", "rep-c")
MODEL = "tiny:latest"
RECONCILE_SECONDS = 1.0
BEAT_ENV = {
    "ELDRIC_PIN_RECONCILE_SECONDS": str(RECONCILE_SECONDS),
    "ELDRIC_PLACEMENT_RESERVE_BYTES": "0",  # tiny models; a nearly full CI disk must not refuse them
    "ELDRIC_BEAT_LOCK_SECONDS": "4",
    # only the pins entry matters here: the others would take the two cores from the agents
    **{f"ELDRIC_{k}_SECONDS": "0" for k in ("PIN_UPDATE", "INVENTORY_SYNC", "REAP", "PARTIAL_CLEAN", "DEBRIS_SWEEP",
                                           "MIRROR_UPDATE", "GC_SWEEP")},
}


@pytest.fixture(scope="module")
def live(cluster, tiny_model):
    # started side by side: each agent's start-up is seconds of CPU-light waiting
    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(cluster.start_controller)] + [pool.submit(cluster.start_worker, w) for w in WORKERS]:
            done.result()
    beat = Service("beat", eldric("beat", "--loglevel", "INFO"), cluster.root, env=cluster.env(**BEAT_ENV)).start()
    cluster.services.append(beat)
    return cluster


def pin_view(live) -> dict:
    return live.api("GET", f"/api/v1/pins/{MODEL}").json()


def reconciles(live) -> int:
    """pins.reconcile runs the agents have finished (Celery logs each)."""
    return sum(len(re.findall(r"pins\.reconcile\[[^]]+\] succeeded", live.workers[w].log_path.read_text(errors="replace")))
               for w in WORKERS if live.workers[w].log_path.exists())


def serving(live, *, count: int, timeout: float = 60.0) -> dict:
    """Wait until the pin's view lists `count` serving workers; return the view."""
    return wait_until(lambda: (v := pin_view(live))["replicas_serving"] == count and v, timeout=timeout,
                      interval=0.2, message=f"{count} serving copies\n{live.logs()}")


def test_replicas_two_of_three_and_a_removed_copy_is_placed_on_the_third(live):
    resp = live.api("POST", "/api/v1/pins", json={"model": "tiny", "replicas": 2})
    assert resp.status_code == 201, resp.text
    first = serving(live, count=2)
    assert first["replicas_wanted"] == 2 and len(first["serving"]) == 2
    runs = reconciles(live)
    wait_until(lambda: reconciles(live) >= runs + 2, timeout=15, interval=0.2, message="two more reconciles")
    assert pin_view(live)["serving"] == first["serving"]
    assert sum(MODEL in live.redis.hkeys(f"eldric:worker:{w}:models") for w in WORKERS) == 2
    jobs = [j for j in live.api("GET", "/api/v1/models/pull-jobs?limit=50").json()["jobs"]
            if j["options"].get("pin") == MODEL]
    assert len(jobs) == 1 and sorted(jobs[0]["targets"]) == first["serving"]

    gone, = [w for w in first["serving"] if w != first["serving"][0]]
    third, = set(WORKERS) - set(first["serving"])
    live.workers[gone].stop()
    wait_until(lambda: not live.redis.exists(f"eldric:worker:{gone}:alive"), timeout=15, interval=0.2,
               message=f"{gone} to go offline")
    assert live.api("DELETE", f"/api/v1/workers/{gone}").status_code == 204
    removed_at = time.monotonic()
    # the next reconcile (one period, plus the beat tick and the agent taking the message) starts the pull
    job = wait_until(lambda: next((j for j in live.api("GET", "/api/v1/models/pull-jobs?limit=50").json()["jobs"]
                                   if j["options"].get("pin") == MODEL and j["targets"] == [third]), None),
                     timeout=15, interval=0.1, message=f"a pull to {third}\n{live.logs()}")
    started = time.monotonic() - removed_at
    print(f"pull to {third} started {started:.1f} s after {gone} was removed")
    assert started < RECONCILE_SECONDS + 5, started
    assert next(p for p in job["workers"] if p["worker"] == third).get("placement_reason"), job
    after = serving(live, count=2)
    assert sorted(after["serving"]) == sorted({first["serving"][0], third})
