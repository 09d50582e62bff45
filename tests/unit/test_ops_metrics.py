"""Prometheus metrics computed from Redis records (fakeredis), and /metrics through the test client."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eldric.cluster import workers as cluster_workers
from controller import create_app
from controller.metrics import read_snapshot, render, source_label
from eldric.cluster.jobs import state as jobstate
from eldric.cluster import keys
from eldric.cluster import pins
from eldric.cluster.jobs.store import create_job


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def add_worker(r, wid: str, wtype: str = "inference", online: bool = True) -> None:
    cluster_workers.register(r, {"id": wid, "type": wtype, "address": "http://x", "backends": ["ollama"]}, ttl=15)
    if not online:
        cluster_workers.go_offline(r, wid)


def set_record(r, job_id: str, wid: str, **fields) -> None:
    r.hset(keys.job_workers(job_id), wid, json.dumps({**jobstate.new_record(0), **fields}))


@pytest.fixture
def cluster() -> fakeredis.FakeRedis:
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    now = time.time()
    add_worker(r, "a")
    add_worker(r, "b")
    add_worker(r, "d", "data")
    add_worker(r, "off", online=False)
    done = create_job(r, kind="pull", model="m:1", targets=["a", "b"], source="ollama", deadline_seconds=600, now=now)
    set_record(r, done, "a", state="completed", completed=1000, total=1000, source="http://up:5000",
               started_at=now - 10, updated_at=now - 8, finished_at=now - 8, transferred=1000)
    set_record(r, done, "b", state="failed", completed=0, error="x", finished_at=now - 5)
    running = create_job(r, kind="pull", model="m:2", targets=["a", "off"], source="ollama", deadline_seconds=600,
                         now=now)
    set_record(r, running, "a", state="pulling", completed=500, total=1000,
               source="https://user:pw@mirror.example/v2?X-Amz-Signature=abc", started_at=now - 5, updated_at=now,
               reused=100)
    create_job(r, kind="distribute", model="m:3", targets=["off"], source="registry", deadline_seconds=600, now=now)
    r.rpush("worker.off", "msg1", "msg2")
    r.rpush("worker.off\x06\x163", "prioritised")
    r.rpush("maintenance", "m")
    pins.save_pin(r, pins.Pin("m:1"))
    cluster_workers.publish_inventory(r, "a", [{"name": "m:1", "digest": "sha256:a"}])
    return r


def test_snapshot_metrics(cluster):
    m = samples(render(read_snapshot(cluster, stale_after=120)).decode())
    assert m[("eldric_jobs", (("kind", "pull"), ("state", "failed")))] == 1
    assert m[("eldric_jobs", (("kind", "pull"), ("state", "running")))] == 1
    assert m[("eldric_jobs", (("kind", "distribute"), ("state", "pending")))] == 1
    assert m[("eldric_job_workers", (("state", "offline"),))] == 2
    assert m[("eldric_job_workers", (("state", "pulling"),))] == 1
    assert m[("eldric_job_workers", (("state", "completed"),))] == 1
    assert m[("eldric_pulled_bytes", (("source", "ollama"),))] == 1000 + 400  # the running pull found 100 on disk
    assert m[("eldric_worker_pull_bytes_per_second", (("worker", "a"),))] == pytest.approx(80, rel=0.01)
    assert m[("eldric_worker_pull_bytes_per_second", (("worker", "b"),))] == 0
    assert m[("eldric_worker_last_pull_bytes_per_second", (("worker", "a"),))] == pytest.approx(500)
    assert m[("eldric_worker_up", (("type", "inference"), ("worker", "off")))] == 0
    assert m[("eldric_workers", (("type", "inference"),))] == 3
    assert m[("eldric_workers_online", (("type", "inference"),))] == 2
    assert m[("eldric_workers_online", (("type", "data"),))] == 1
    assert m[("eldric_queue_messages", (("queue", "worker.off"),))] == 3
    assert m[("eldric_queue_messages", (("queue", "maintenance"),))] == 1
    assert m[("eldric_queue_messages", (("queue", "type.inference"),))] == 0
    assert m[("eldric_pin_workers", (("model", "m:1"), ("status", "present")))] == 1
    assert m[("eldric_pin_workers", (("model", "m:1"), ("status", "missing")))] == 2


def test_metrics_never_write(cluster):
    before = {k: cluster.dump(k) for k in cluster.keys("*")}
    read_snapshot(cluster, stale_after=0, now=time.time() + 10_000)  # everything would be reaped
    assert {k: cluster.dump(k) for k in cluster.keys("*")} == before


@pytest.mark.parametrize("source, label", [
    ("ollama", "ollama"), ("registry", "registry"), ("cluster", "registry"), ("url", "url"), ("worker", "peer"),
    ("https://bucket.s3.example/m.gguf?X-Amz-Signature=abc", "other"), ("local", "other"), (None, "other"),
])
def test_source_labels_are_a_bounded_set_of_kinds(source, label):
    assert source_label(source) == label


def test_only_bytes_that_crossed_the_network_count_by_source_kind():
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    now = time.time()
    add_worker(r, "a")
    add_worker(r, "b")
    shared = create_job(r, kind="distribute", model="f:1", targets=["a"], source="registry", deadline_seconds=600,
                        now=now)
    set_record(r, shared, "a", state="completed", completed=5000, total=5000, transferred=0, status="shared",
               source="/mnt/models/f/1", finished_at=now)
    for n, (kind, target) in enumerate((("worker", "a"), ("worker", "b"), ("url", "a"))):
        job = create_job(r, kind="distribute", model=f"g:{n}", targets=[target], source=kind, deadline_seconds=600,
                         now=now)
        set_record(r, job, target, state="completed", completed=300, total=300, transferred=300, finished_at=now,
                   source=f"worker p{n}" if kind == "worker" else f"https://h{n}.example/m.gguf?sig=s")
    m = samples(render(read_snapshot(r, stale_after=120)).decode())
    pulled = {labels[0][1]: v for (name, labels), v in m.items() if name == "eldric_pulled_bytes"}
    assert pulled == {"ollama": 0, "registry": 0, "url": 300, "peer": 600, "other": 0}


def test_fan_out_bytes_count_under_peer_and_the_rest_under_the_job_source():
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    now = time.time()
    add_worker(r, "a")
    add_worker(r, "b")
    job = create_job(r, kind="pull", model="m:1", targets=["a", "b"], source="ollama", deadline_seconds=600, now=now)
    set_record(r, job, "a", state="completed", completed=1000, total=1000, transferred=1000, upstream_bytes=1000,
               peer_bytes=0, finished_at=now)
    set_record(r, job, "b", state="pulling", completed=600, total=1000, upstream_bytes=100, peer_bytes=500,
               peers={"a": 500}, started_at=now - 2, updated_at=now)
    m = samples(render(read_snapshot(r, stale_after=120)).decode())
    pulled = {labels[0][1]: v for (name, labels), v in m.items() if name == "eldric_pulled_bytes"}
    assert pulled == {"ollama": 1100, "registry": 0, "url": 0, "peer": 500, "other": 0}


def test_metrics_endpoint_answers_without_the_api_token(cluster):
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "s3cret"})
    app.extensions["eldric.redis"] = cluster
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain; version=0.0.4")
    assert ("eldric_workers_online", (("type", "inference"),)) in samples(resp.get_data(as_text=True))


def test_metrics_is_503_when_redis_is_down():
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "", "CHECK_UPSTREAM": False})
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 503 and resp.json["code"] == 503
