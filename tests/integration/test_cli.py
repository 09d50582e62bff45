"""The operator commands (`eldric pull|jobs|models|workers|show|distribute|registry ...`) run as real
processes against a live cluster: redis-server, docker-registry, the model registry, controller, workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eldric.client.cli import Api, ResumableUpload
from tests.support.fake_backends import FakeOllama
from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import corrupt_blob, push_ollama_model
from testbed.processes import Service, eldric, free_port, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SECRET = "cli-secret"


@pytest.fixture(scope="module")
def live(cluster, workdir, tiny_model):
    with FakeOllama(workdir / "fake-ollama") as ollama:
        port = free_port()
        reg = Service("registry", eldric("registry", "--port", str(port), "--storage", str(workdir / "reg")), workdir,
                      env=cluster.env(ELDRIC_CLUSTER_SECRET=SECRET), cwd=REPO).start()
        cluster.services.append(reg)
        registry_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: cluster.http.get(f"{registry_url}/healthz", timeout=2).ok, timeout=30, message="registry")
        cluster.start_controller(ELDRIC_REGISTRY_URL=registry_url, ELDRIC_CLUSTER_SECRET=SECRET)
        for name in ("inf-a", "inf-b"):
            cluster.start_worker(name, "inference", ELDRIC_CLUSTER_SECRET=SECRET, ELDRIC_OLLAMA_URL=ollama.url,
                                 ELDRIC_BACKENDS="ollama")
        yield cluster


def run(live, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """`eldric ARGS --controller URL` as a subprocess, environment without ELDRIC_* settings."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(live.root), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "eldric.cli", *args, "--controller", live.controller_url],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_pull_draws_a_bar_per_worker_and_exits_0(live):
    done = run(live, "pull", "tiny")
    assert done.returncode == 0, done.stderr
    assert "tiny:latest: completed on 2 of 2 worker(s)" in done.stdout
    for name in ("inf-a", "inf-b"):  # the bars go to stderr when stdout is not a terminal
        assert name in done.stderr and "completed" in done.stderr, done.stderr
    models = {m["name"]: m for m in live.api("GET", "/api/v1/models").json()["models"]}
    assert models["tiny:latest"]["coverage"] == 100.0


def test_failing_pull_names_the_reason_and_exits_1(live, workdir):
    pushed = push_ollama_model(live.oci.url, "library/cli-broken", "v1",
                               gguf_path=write_llama_gguf(workdir / "cli-broken.gguf", name="broken", width=80))
    corrupt_blob(live.oci.root, pushed["layers"]["application/vnd.ollama.image.model"])
    done = run(live, "pull", "cli-broken:v1", "--workers", "inf-a")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "✘ inf-a:" in done.stderr and "digest mismatch" in done.stderr, done.stderr
    assert "failed on 1 of 1 worker(s)" in done.stdout


def test_a_typo_is_refused_with_the_tags_there_and_no_job(live):
    """Issue 22, finding 5: `eldric pull tiny:latestt` is one line naming the tags, not a job failed everywhere."""
    before = live.api("GET", "/api/v1/models/pull-jobs").json()["total"]
    done = run(live, "pull", "tiny:latestt")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.strip() == ("eldric pull: POST /api/v1/models/pull: HTTP 404: model 'tiny:latestt' not found at "
                                   f"{live.oci.url}: its tags there are latest"), done.stderr
    assert live.api("GET", "/api/v1/models/pull-jobs").json()["total"] == before


def test_json_outputs_parse(live):
    pulled = run(live, "pull", "tiny", "--workers", "inf-a", "--json")
    assert pulled.returncode == 0, pulled.stderr
    job = json.loads(pulled.stdout)
    assert job["state"] == "completed" and [w["worker"] for w in job["workers"]] == ["inf-a"]
    one = json.loads(run(live, "jobs", job["id"], "--json").stdout)
    assert one["id"] == job["id"] and one["state"] == "completed"
    listed = json.loads(run(live, "jobs", "--json", "--limit", "5").stdout)
    assert job["id"] in [j["id"] for j in listed["jobs"]] and listed["limit"] == 5
    models = json.loads(run(live, "models", "--json").stdout)
    assert "tiny:latest" in [m["name"] for m in models["models"]] and models["eligible_workers"] == 2
    workers = json.loads(run(live, "workers", "--json").stdout)
    assert sorted(w["id"] for w in workers["workers"]) == ["inf-a", "inf-b"]
    worker = json.loads(run(live, "workers", "inf-a", "--json").stdout)
    assert worker["id"] == "inf-a" and "tiny:latest" in [m["name"] for m in worker["local_models"]]
    shown = json.loads(run(live, "show", "tiny", "--json").stdout)
    assert shown["details"]["format"] == "gguf" and "You are a test." in shown["system"]


def test_tables_for_people(live):
    models = run(live, "models")
    assert models.returncode == 0 and "tiny:latest" in models.stdout and "COVERAGE" in models.stdout
    workers = run(live, "workers")
    assert "inf-a" in workers.stdout and "2 of 2 worker(s) online" in workers.stdout
    jobs = run(live, "jobs")
    assert "MODEL" in jobs.stdout and "tiny:latest" in jobs.stdout
    shown = run(live, "show", "tiny")
    assert shown.returncode == 0 and "template" in shown.stdout and "You are a test." in shown.stdout


def test_distribute_from_a_worker(live):
    live.api("POST", "/api/v1/models/delete", json={"model": "tiny", "workers": ["inf-b"]})
    wait_until(lambda: "tiny:latest" not in [m["name"] for m in live.api("GET", "/api/v1/workers/inf-b/models")
                                             .json()["models"]], timeout=30, message="tiny gone from inf-b")
    done = run(live, "distribute", "tiny:latest", "--from", "worker:inf-a", "--to", "inf-b")
    assert done.returncode == 0, done.stderr
    assert "completed on 1 of 1" in done.stdout
    bad = run(live, "distribute", "tiny", "--from", "floppy-disk")
    assert bad.returncode == 1 and "--from must be" in bad.stderr


def test_registry_upload_list_distribute_delete(live, workdir):
    gguf = write_llama_gguf(workdir / "cli-up.gguf", name="cliup", width=96)
    up = run(live, "registry", "upload", str(gguf), "--name", "cliup", "--chunk-size", str(64 << 10), "--json",
             "--state-dir", str(workdir / "cli-state"))
    assert up.returncode == 0, up.stderr
    model = json.loads(up.stdout)
    assert model["name"] == "cliup" and model["size"] == gguf.stat().st_size and model["format"] == "gguf"
    listed = json.loads(run(live, "registry", "list", "--json").stdout)
    assert model["id"] in [m["id"] for m in listed["models"]]
    assert "cliup:" in run(live, "registry", "list").stdout
    sent = run(live, "distribute", model["id"], "--from", "registry", "--to", "inf-a")
    assert sent.returncode == 0, sent.stderr
    gone = run(live, "registry", "delete", model["id"])
    assert gone.returncode == 0 and gone.stdout.strip() == f"deleted {model['reference']} ({model['id']})"
    assert live.api("GET", f"/api/v1/model-registry/{model['id']}").status_code == 404
    again = run(live, "registry", "delete", model["id"])
    assert again.returncode == 1 and "404" in again.stderr


def test_registry_delete_by_name_and_version_and_a_fresh_upload_says_no_resume(live, workdir):
    """Issue 22, finding 6: `registry delete house:v1` answered a werkzeug 404 page; every fresh upload said
    "resumed at byte <full size>"."""
    gguf = write_llama_gguf(workdir / "house.gguf", name="house", width=72)
    up = run(live, "registry", "upload", str(gguf), "--name", "house", "--version", "v1",
             "--state-dir", str(workdir / "house-state"))
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith("uploaded house:v1 as ") and "resumed" not in up.stdout, up.stdout
    model_id = up.stdout.split(" as ")[1].split(":")[0]
    wrong = run(live, "registry", "delete", "house:v7")
    assert wrong.returncode == 1 and wrong.stderr.strip() == (
        "eldric registry: no model 'house:v7' in the registry; house has versions v1"), wrong.stderr
    gone = run(live, "registry", "delete", "house:v1")
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.strip() == f"deleted house:v1 ({model_id})"
    assert live.api("GET", f"/api/v1/model-registry/{model_id}").status_code == 404


def test_registry_upload_resumes_where_an_interrupted_one_stopped(live, workdir):
    gguf = write_llama_gguf(workdir / "resume.gguf", name="resume", width=128)
    state = workdir / "resume-state"
    api = Api(live.controller_url)
    patches = []

    def call(method: str, path: str, **kw):
        if method == "PATCH" and len(patches) == 2:
            raise KeyboardInterrupt  # Ctrl-C after two chunks
        resp = api.call(method, path, **kw)
        if method == "PATCH":
            patches.append(resp.json()["offset"])
        return resp

    first = ResumableUpload(call, gguf, name="resume", chunk_bytes=64 << 10, state_dir=state, key_extra=api.base)
    with pytest.raises(KeyboardInterrupt):
        first.run(lambda n: None)
    assert patches == [64 << 10, 128 << 10] and len(list(state.iterdir())) == 1

    done = run(live, "registry", "upload", str(gguf), "--name", "resume", "--chunk-size", str(64 << 10),
               "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert f"resumed at byte {128 << 10}" in done.stdout
    assert not list(state.iterdir()), "resume state removed once committed"
    found = live.api("GET", "/api/v1/model-registry", params={"name": "resume"}).json()["models"]
    assert len(found) == 1 and found[0]["size"] == gguf.stat().st_size


def test_unreachable_controller_is_one_line_and_exit_1(live):
    done = subprocess.run([sys.executable, "-m", "eldric.cli", "models"], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin", "HOME": str(live.root),
                                                     "ELDRIC_CONTROLLER": f"http://127.0.0.1:{free_port()}"})
    assert done.returncode == 1
    assert "cannot reach the controller" in done.stderr and done.stdout == ""
