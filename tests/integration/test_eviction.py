"""Eviction (issue 25) on one real agent whose data dir is a 64 MiB tmpfs: above its high watermark the least
recently used model that is neither pinned nor loaded goes (a delete job with reason "evicted" in the job
history, counted in /metrics), as the eviction plan said beforehand; a pull that does not fit is refused,
and with make_room evicts by the same rules first.

The agent serves llama.cpp only, faced by a FakeOpenAIModels llama-server stand-in that lists one model
(loaded). Watermarks are bytes used, computed from the models' sizes: the four models are over the high one,
and removing the largest unprotected one alone brings the disk under the low one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from celery import Celery

from eldric.cluster.celeryconf import celery_config
from eldric.cluster.queues import MAINTENANCE_QUEUE, TASK_EVICT_ALL
from testbed.disks import MountError, small_tmpfs
from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import push_ollama_model
from testbed.processes import wait_until
from tests.support.fake_backends import FakeOpenAIModels

pytestmark = pytest.mark.integration

MB = 1 << 20
WORKER = "ev-1"
# name -> size: "evpin" gets pinned to the worker, "evload" is what the llama-server stand-in lists,
# "evold" (pulled before "evnew", so less recently used) is the one eviction must choose.
MODELS = {"evpin": 4 * MB, "evload": 4 * MB, "evold": 8 * MB, "evnew": 4 * MB}


@pytest.fixture(scope="module")
def pushed(oci, workdir) -> dict[str, int]:
    sizes = {}
    for name, size in MODELS.items():
        gguf = write_gguf_of_size(workdir / f"{name}.gguf", size, name=name)
        push_ollama_model(oci.url, f"library/{name}", "latest", gguf_path=gguf)
        sizes[name] = gguf.stat().st_size
    return sizes


@pytest.fixture(scope="module")
def node(cluster, pushed):
    total = sum(pushed.values())
    old = pushed["evold"]
    data_dir = cluster.root / "nodes" / WORKER
    try:
        with small_tmpfs(data_dir, "64m"):
            llama = FakeOpenAIModels(["evload"], owned_by="llamacpp").start()
            try:
                cluster.start_controller()
                cluster.start_worker(WORKER, ELDRIC_BACKENDS="llamacpp", ELDRIC_LLAMACPP_URL=llama.url,
                                     ELDRIC_DISK_HIGH_WATERMARK=str(total - old // 4),
                                     ELDRIC_DISK_LOW_WATERMARK=str(total - 3 * old // 4))
                yield cluster, data_dir
            finally:
                llama.stop()
    except MountError as exc:
        pytest.skip(f"a worker's small disk: {exc}")


def inventory(live) -> dict[str, dict]:
    return {m["name"]: m for m in live.api("GET", f"/api/v1/workers/{WORKER}/models").json()["models"]}


def pull(live, model: str, **extra) -> dict:
    resp = live.api("POST", "/api/v1/models/pull", json={"model": model, "workers": [WORKER], **extra})
    assert resp.status_code == 202, resp.text
    return live.wait_job(resp.json()["id"])


def loaded(live) -> set[str]:
    raw = live.redis.get(f"eldric:worker:{WORKER}:loaded")
    return {m["name"] for m in json.loads(raw)} if raw else set()


def evictions(live) -> list[dict]:
    jobs = live.api("GET", "/api/v1/models/pull-jobs", params={"limit": 100}).json()["jobs"]
    return [j for j in jobs if j["kind"] == "delete" and j["options"].get("reason") == "evicted"]


def test_over_high_only_the_lru_unpinned_unloaded_model_goes_as_the_plan_said(node):
    live, data_dir = node
    for name in MODELS:  # one after another: each later install is a later last use
        assert pull(live, name)["state"] == "completed"
    resp = live.api("POST", "/api/v1/pins", json={"model": "evpin", "workers": [WORKER]})
    assert resp.status_code in (200, 201), resp.text
    names = {f"{n}:latest" for n in MODELS}
    wait_until(lambda: set(inventory(live)) == names and all(m.get("last_used") for m in inventory(live).values()),
               timeout=15, message=f"the inventory with last use\n{live.logs()}")
    wait_until(lambda: "evload:latest" in loaded(live), timeout=10, message="the loaded-models report")
    high = int(live.redis.hget(f"eldric:worker:{WORKER}", "disk_high_watermark"))  # for the dashboard's disk bar

    plan = live.api("GET", f"/api/v1/workers/{WORKER}/eviction-plan")
    assert plan.status_code == 200, plan.text
    plan = plan.json()
    assert plan["over_high"] and plan["high_watermark"] == high and plan["disk"]["used"] > high
    assert [m["name"] for m in plan["evict"]] == ["evold:latest"]
    assert "least recently used (last used" in plan["evict"][0]["why"] and "> high" in plan["evict"][0]["why"]
    assert {m["name"]: m["why"] for m in plan["protected"]} == {"evpin:latest": "pinned to this worker",
                                                                "evload:latest": "loaded in llamacpp"}
    assert [m["name"] for m in plan["kept"]] == ["evnew:latest"] and plan["short"] == 0
    assert set(inventory(live)) == names and evictions(live) == []  # the plan changed nothing

    producer = Celery("eviction-test", set_as_current=False)
    producer.conf.update(celery_config(live.redis_server.url))
    producer.send_task(TASK_EVICT_ALL, queue=MAINTENANCE_QUEUE)  # what beat sends every ELDRIC_EVICTION_SECONDS
    wait_until(lambda: "evold:latest" not in inventory(live), timeout=20, message=f"the eviction\n{live.logs()}")
    assert set(inventory(live)) == names - {"evold:latest"}
    [job] = evictions(live)
    assert job["model"] == "evold:latest" and job["state"] == "completed" and job["targets"] == [WORKER]
    assert job["options"]["why"] == plan["evict"][0]["why"]
    assert not list((data_dir / "backends" / "llamacpp").glob("evold*"))  # its hard link went too
    used = os.statvfs(data_dir)
    assert (used.f_blocks - used.f_bfree) * used.f_frsize <= plan["low_watermark"]
    metrics = live.http.get(f"{live.controller_url}/metrics", timeout=10).text
    assert f'eldric_evictions_total{{worker="{WORKER}"}} 1.0' in metrics


def test_a_pull_that_does_not_fit_is_refused_and_with_make_room_evicts_first(node, oci, workdir):
    live, data_dir = node
    st = os.statvfs(data_dir)
    free = st.f_bavail * st.f_frsize
    gguf = write_gguf_of_size(workdir / "evbig.gguf", free + MB, name="evbig")  # fits once evnew (4 MiB) is gone
    assert free < gguf.stat().st_size < free + 3 * MB
    push_ollama_model(oci.url, "library/evbig", "latest", gguf_path=gguf)

    refused = pull(live, "evbig")
    assert refused["state"] == "failed" and "no space left" in refused["workers"][0]["error"]
    assert "evnew:latest" in inventory(live) and len(evictions(live)) == 1  # without make_room nothing goes

    done = pull(live, "evbig", make_room=True)
    assert done["state"] == "completed", done["workers"][0]["error"]
    assert set(inventory(live)) == {"evpin:latest", "evload:latest", "evbig:latest"}
    job = next(j for j in evictions(live) if j["model"] == "evnew:latest")
    assert job["state"] == "completed" and job["options"]["why"].startswith("make room for evbig")
    assert Path(data_dir / "last_used.json").exists()
