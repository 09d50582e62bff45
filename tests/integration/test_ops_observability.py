"""Flower, health checks, Prometheus metrics and structured logs over a live cluster."""

from __future__ import annotations

import json
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import REPO_ROOT
from testbed.processes import Service, eldric, free_port, wait_until

pytestmark = pytest.mark.integration

SECRET = "cluster-secret-never-in-flower"
FLOWER_AUTH = ("ops", "flower-pw")


@pytest.fixture(scope="module")
def live(cluster, tiny_model):
    cluster.start_controller(ELDRIC_CLUSTER_SECRET=SECRET)
    port = free_port()
    flower = Service("flower", eldric("flower", "--port", str(port)), cluster.root,
                     env=cluster.env(FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH))).start()
    cluster.services.append(flower)
    cluster.flower_url = f"http://127.0.0.1:{port}"
    wait_until(lambda: cluster.http.get(f"{cluster.flower_url}/healthcheck", timeout=2).ok, timeout=30,
               message=f"flower to answer\n{flower.log_tail()}")
    cluster.start_worker("inf-f", "inference", ELDRIC_LOG_FORMAT="json", ELDRIC_CLUSTER_SECRET=SECRET)
    cluster.start_worker("data-f", "data", ELDRIC_CLUSTER_SECRET=SECRET)
    return cluster


def flower_get(live, path: str):
    return live.http.get(f"{live.flower_url}{path}", auth=FLOWER_AUTH, timeout=30)


@pytest.fixture(scope="module")
def pulled(live):
    """One completed pull of tiny to inf-f, watched by Flower from the start."""
    wait_until(lambda: {"inf-f@eldric", "data-f@eldric"} <= set(flower_get(live, "/api/workers?refresh=1").json()),
               timeout=45, interval=1, message="flower to see both workers")
    job = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["inf-f"]}).json()
    final = live.wait_job(job["id"])
    assert final["state"] == "completed", final
    return final


def test_flower_shows_the_workers_and_the_completed_pull_task_without_secrets(live, pulled):
    assert flower_get(live, "/api/workers").status_code == 200
    assert live.http.get(f"{live.flower_url}/api/workers", timeout=10).status_code == 401  # auth required

    def pull_task():
        tasks = flower_get(live, "/api/tasks?taskname=models.pull").json()
        return next((t for t in tasks.values() if pulled["id"] in (t.get("args") or "")
                     and t.get("state") == "SUCCESS"), None)

    task = wait_until(pull_task, timeout=30, interval=0.5, message="the pull task in flower")
    assert task["name"] == "models.pull" and task["worker"] == "inf-f@eldric"
    assert "tiny:latest" in task["args"]
    everything = flower_get(live, "/api/tasks").text
    for secret in (SECRET, "Signature=", "X-Amz-", "Bearer "):
        assert secret not in everything


def test_health_and_readiness_on_the_controller_and_an_agent(live):
    assert live.api("GET", "/healthz").json()["status"] == "ok"
    assert live.api("GET", "/readyz").json()["status"] == "ready"
    agent = live.api("GET", "/api/v1/workers/inf-f").json()["address"]
    assert live.http.get(f"{agent}/healthz", timeout=5).json() == {"status": "ok", "type": "inference",
                                                                   "worker": "inf-f"}
    assert live.http.get(f"{agent}/readyz", timeout=5).status_code == 200
    port = free_port()
    cut_off = Service(f"controller-noredis-{port}", eldric("controller", "--port", str(port)), live.root,
                      env=live.env(ELDRIC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")).start()
    live.services.append(cut_off)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: live.http.get(f"{url}/healthz", timeout=2).ok, timeout=20, message="controller without redis")
    ready = live.http.get(f"{url}/readyz", timeout=20)
    assert ready.status_code == 503 and "redis" in ready.json()["message"]
    cut_off.stop()


def test_controller_serves_under_gunicorn_with_the_deploy_config(live):
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--config", str(REPO_ROOT / "deploy" / "gunicorn.conf.py"),
            "controller:create_app()"]
    svc = Service(f"gunicorn-{port}", argv, live.root,
                  env=live.env(ELDRIC_CONTROLLER_PORT=str(port), ELDRIC_CONTROLLER_WORKERS="1",
                               ELDRIC_LOG_FORMAT="json"), cwd=REPO_ROOT).start()
    live.services.append(svc)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: live.http.get(f"{url}/readyz", timeout=2).ok, timeout=30, message=f"gunicorn\n{svc.log_tail()}")
    assert live.http.get(f"{url}/api/v1/workers/inf-f", timeout=10).json()["online"]
    assert "eldric_workers_online" in live.http.get(f"{url}/metrics", timeout=10).text
    svc.stop()
    access = [json.loads(line) for line in svc.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(e["logger"] == "gunicorn.access" and "/readyz" in e["message"] for e in access)


def scrape(live) -> dict[tuple[str, tuple], float]:
    resp = live.api("GET", "/metrics")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def test_metrics_show_jobs_bytes_throughput_queues_and_workers(live, pulled, tiny_model):
    gone = live.start_worker("gone-f", "inference")
    gone.stop()
    wait_until(lambda: not live.redis.exists("eldric:worker:gone-f:alive"), timeout=15, message="gone-f offline")
    waiting = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["gone-f"]}).json()

    m = scrape(live)
    assert m[("eldric_jobs", (("kind", "pull"), ("state", "completed")))] >= 1
    assert m[("eldric_jobs", (("kind", "pull"), ("state", "pending")))] >= 1
    assert m[("eldric_job_workers", (("state", "offline"),))] >= 1
    size = sum(b["size"] for b in [tiny_model["manifest"]["config"], *tiny_model["manifest"]["layers"]])
    assert m[("eldric_pulled_bytes", (("source", "ollama"),))] >= size
    assert {labels for name, labels in m if name == "eldric_pulled_bytes"} == {
        (("source", kind),) for kind in ("ollama", "registry", "url", "peer", "other")}
    assert m[("eldric_worker_last_pull_bytes_per_second", (("worker", "inf-f"),))] > 0
    assert m[("eldric_worker_pull_bytes_per_second", (("worker", "inf-f"),))] == 0
    assert m[("eldric_worker_up", (("type", "inference"), ("worker", "inf-f")))] == 1
    assert m[("eldric_worker_up", (("type", "inference"), ("worker", "gone-f")))] == 0
    assert m[("eldric_workers_online", (("type", "data"),))] >= 1
    assert m[("eldric_queue_messages", (("queue", "worker.gone-f"),))] == 1  # the pull waiting for it
    assert m[("eldric_queue_messages", (("queue", "type.inference"),))] == 0
    assert ("eldric_queue_messages", (("queue", "maintenance"),)) in m
    assert waiting["workers"][0]["state"] == "offline"


def test_agent_logs_are_json_lines_carrying_job_and_worker_ids(live, pulled):
    lines = [json.loads(line) for line in live.workers["inf-f"].log_path.read_text().splitlines()
             if line.startswith("{")]
    assert lines, live.workers["inf-f"].log_tail()
    about_job = [e for e in lines if e.get("job_id") == pulled["id"]]
    assert about_job, lines[-10:]
    assert all(e["worker_id"] == "inf-f" for e in about_job)
    assert any(e["task"] == "models.pull" and "succeeded" in e["message"] for e in about_job)
    assert {"ts", "level", "logger", "message"} <= set(about_job[0])
