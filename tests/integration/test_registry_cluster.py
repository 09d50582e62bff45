"""The registry through the controller, real processes (redis-server, `eldric registry`, `eldric controller`):
streamed proxying in constant memory, DELETE refused during distribution, imports as jobs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import redis as redis_lib

from eldric.cluster.jobs import store as jobs
from eldric.cluster.jobs import state as jobstate
from eldric.cluster import keys
from eldric.client.registry import ModelRegistryClient
from tests.support.file_server import FileServer
from testbed.gguf_models import write_llama_gguf
from testbed.processes import LOOPBACK, peak_rss_mib, session, start_registry_and_controller, wait_until

pytestmark = pytest.mark.integration
API = "/api/v1/model-registry"
SECRET = "registry-secret"


class Live:
    def __init__(self, controller: str, registry: str, controller_pid: int, client: redis_lib.Redis) -> None:
        self.controller, self.registry, self.controller_pid, self.redis = controller, registry, controller_pid, client
        self.http = session()

    def api(self, method: str, path: str, **kw):
        return self.http.request(method, f"{self.controller}{path}", timeout=30, **kw)


@pytest.fixture(scope="module")
def live(workdir: Path, redis_server):
    env = {"ELDRIC_REDIS_URL": redis_server.url, "ELDRIC_CLUSTER_SECRET": SECRET, "ELDRIC_URL_ALLOWLIST": LOOPBACK}
    registry, controller, rport, cport = start_registry_and_controller(workdir, env)
    yield Live(f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{rport}", controller.proc.pid,
               redis_lib.Redis.from_url(redis_server.url, decode_responses=True))
    controller.stop()
    registry.stop()


def test_registry_needs_the_cluster_secret_the_controller_sends(live: Live) -> None:
    assert live.http.get(f"{live.registry}{API}", timeout=5).status_code == 401
    assert live.api("GET", API).status_code == 200


def test_large_upload_and_download_stream_through_the_controller(live: Live, workdir: Path) -> None:
    big = workdir / "weights.bin"
    with open(big, "wb") as f:
        for _i in range(96):
            f.write(os.urandom(1 << 16) * 16)  # 96 MiB
    digest = "sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()
    before = peak_rss_mib(live.controller_pid)
    client = ModelRegistryClient(live.controller)
    model = client.upload_file(big, name="weights", format="other", digest=digest)
    assert model["files"][0]["sha256"] == digest and model["format"] == "other"
    out = client.download(model["id"], "weights.bin", workdir / "weights.out")  # checks the sha256 too
    assert out.stat().st_size == 96 << 20
    ranged = live.api("GET", f"{API}/{model['id']}/files/weights.bin", headers={"Range": "bytes=-4096"})
    assert ranged.status_code == 206 and ranged.content == big.read_bytes()[-4096:]
    grown = peak_rss_mib(live.controller_pid) - before
    assert grown < 40, f"the controller's peak RSS grew by {grown:.0f} MB moving 96 MiB each way"


def test_delete_is_refused_while_the_model_is_distributed(live: Live, workdir: Path) -> None:
    gguf = write_llama_gguf(workdir / "busy.gguf", name="busy")
    model = ModelRegistryClient(live.controller).upload_file(gguf, name="busy")
    job_id = jobs.create_job(live.redis, kind="distribute", model=model["reference"], targets=["inf-a"],
                             source="registry", deadline_seconds=600,
                             options={"registry_model_id": model["id"]})
    resp = live.api("DELETE", f"{API}/{model['id']}")
    assert resp.status_code == 409 and job_id in resp.json()["message"] and resp.json()["code"] == 409
    # Encoded tricks must not reach another registry path than the one checked.
    for trick in ("%23", "%3Fx=1", "%2F..", "%252e"):
        resp = live.api("DELETE", f"{API}/{model['id']}{trick}")
        assert resp.status_code in (400, 404, 405), (trick, resp.status_code, resp.text)
    assert live.api("GET", f"{API}/{model['id']}").status_code == 200
    done = dict(jobstate.new_record(0), state=jobstate.COMPLETED)
    live.redis.hset(keys.job_workers(job_id), "inf-a", json.dumps(done))
    assert live.api("DELETE", f"{API}/{model['id']}").status_code == 204
    assert live.api("GET", f"{API}/{model['id']}").status_code == 404


ID = "0" * 32  # the shape of a model id; ids of another shape match no route (404)


@pytest.mark.parametrize("path, code", [
    (f"{ID}/files/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/openapi.json", 400),
    (f"{ID}/files/%2e%2e/registry.db", 400),
    (f"{ID}/files/a%5Cb", 400),
    (f"{ID}/files/a%00b", 400),
    ("x%23/files/model.gguf", 404),
    (f"{ID}%23/files/model.gguf", 404),
])
def test_encoded_path_tricks_are_refused_before_reaching_the_registry(live: Live, path: str, code: int) -> None:
    resp = live.api("GET", f"{API}/{path}")
    assert resp.status_code == code, (path, resp.status_code, resp.text[:200])
    assert resp.json()["code"] == code


def test_import_is_a_job_listed_with_the_pulls(live: Live, workdir: Path) -> None:
    www = workdir / "www"
    www.mkdir()
    gguf = write_llama_gguf(www / "hub.gguf", name="hub", width=96)
    server = FileServer(www, token="hf_tok")
    try:
        resp = live.api("POST", f"{API}/imports", json={"name": "hub", "url": f"{server.url}/hub.gguf",
                                                        "token": "hf_tok"})
        assert resp.status_code == 202, resp.text
        job = resp.json()
        final = wait_until(lambda: (j := live.api("GET", f"/api/v1/models/pull-jobs/{job['id']}").json())["state"]
                           in ("completed", "failed") and j, timeout=30, message="the import job")
        failed = live.api("POST", f"{API}/imports", json={"name": "nohub", "url": f"{server.url}/missing.gguf"})
        failed_final = wait_until(
            lambda: (j := live.api("GET", f"/api/v1/models/pull-jobs/{failed.json()['id']}").json())["state"]
            in ("completed", "failed") and j, timeout=30, message="the failing import job")
    finally:
        server.close()
    assert final["state"] == "completed", json.dumps(final, indent=1)
    (worker,) = final["workers"]
    assert worker["worker"] == "registry" and worker["percent"] == 100.0 and worker["total"] == gguf.stat().st_size
    assert final["kind"] == "import" and "hf_tok" not in json.dumps(final)
    listed = live.api("GET", "/api/v1/models/pull-jobs", params={"kind": "import"}).json()["jobs"]
    assert {j["id"] for j in listed} >= {job["id"], failed.json()["id"]}
    models = live.api("GET", API, params={"source": "import", "name": "hub"}).json()["models"]
    assert len(models) == 1 and models[0]["details"]["architecture"] == "llama"
    assert failed_final["state"] == "failed" and "401" in failed_final["workers"][0]["error"]
