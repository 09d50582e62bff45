"""Prometheus metrics computed from Redis records (fakeredis), and /metrics through the test client."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller import create_app
from controller.metrics import read_snapshot, render, source_label
from eldric.cluster import jobstate
from eldric.cluster import keys
from eldric.cluster import pins
from eldric.cluster.jobstore import create_job
from worker_agent import membership


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def add_worker(r, wid: str, wtype: str = "inference", online: bool = True) -> None:
    membership.register(r, {"id": wid, "type": wtype, "address": "http://x", "backends": ["ollama"]}, ttl=15)
    if not online:
        membership.go_offline(r, wid)


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
               started_at=now - 10, updated_at=now - 8, finished_at=now - 8)
    set_record(r, done, "b", state="failed", completed=0, error="x", finished_at=now - 5)
    running = create_job(r, kind="pull", model="m:2", targets=["a", "off"], source="ollama", deadline_seconds=600,
                         now=now)
    set_record(r, running, "a", state="pulling", completed=500, total=1000,
               source="https://user:pw@mirror.example/v2?X-Amz-Signature=abc", started_at=now - 5, updated_at=now)
    create_job(r, kind="distribute", model="m:3", targets=["off"], source="registry", deadline_seconds=600, now=now)
    r.rpush("worker.off", "msg1", "msg2")
    r.rpush("worker.off\x06\x163", "prioritised")
    r.rpush("maintenance", "m")
    pins.save_pin(r, pins.Pin("m:1"))
    membership.publish_inventory(r, "a", [{"name": "m:1", "digest": "sha256:a"}])
    return r


def test_snapshot_metrics(cluster):
    m = samples(render(read_snapshot(cluster, stale_after=120)).decode())
    assert m[("eldric_jobs", (("kind", "pull"), ("state", "failed")))] == 1
    assert m[("eldric_jobs", (("kind", "pull"), ("state", "running")))] == 1
    assert m[("eldric_jobs", (("kind", "distribute"), ("state", "pending")))] == 1
    assert m[("eldric_job_workers", (("state", "offline"),))] == 2
    assert m[("eldric_job_workers", (("state", "pulling"),))] == 1
    assert m[("eldric_job_workers", (("state", "completed"),))] == 1
    assert m[("eldric_pulled_bytes", (("source", "http://up:5000"),))] == 1000
    assert m[("eldric_pulled_bytes", (("source", "https://mirror.example/v2"),))] == 500
    assert m[("eldric_worker_pull_bytes_per_second", (("worker", "a"),))] == pytest.approx(100, rel=0.01)
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
    ("https://registry.ollama.ai", "https://registry.ollama.ai"),
    ("http://u:secret@10.0.0.1:8892/v2/", "http://10.0.0.1:8892/v2"),
    ("https://bucket.s3.example/m.gguf?X-Amz-Signature=abc&X-Amz-Credential=k", "https://bucket.s3.example/m.gguf"),
    ("peer:gpu01", "peer:gpu01"),
    (None, "unknown"),
])
def test_source_labels_never_carry_credentials_or_signatures(source, label):
    assert source_label(source) == label


def test_metrics_endpoint_answers_without_the_api_token(cluster):
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "s3cret"})
    app.extensions["eldric.redis"] = cluster
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain; version=0.0.4")
    assert ("eldric_workers_online", (("type", "inference"),)) in samples(resp.get_data(as_text=True))


def test_metrics_is_503_when_redis_is_down():
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": ""})
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 503 and resp.json["code"] == 503
