"""A live cluster on loopback: redis-server, docker-registry, controller, worker agents."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_lib

from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import OCIRegistry, push_ollama_model
from testbed.processes import LOOPBACK, RedisServer, Service, eldric, free_port, session, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def redis_server(workdir):
    server = RedisServer(workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oci(workdir):
    with OCIRegistry(workdir / "oci") as reg:
        yield reg


class Cluster:
    """Starts eldric services against one Redis and one upstream registry; stops them all."""

    def __init__(self, root: Path, redis_server: RedisServer, oci: OCIRegistry) -> None:
        self.root, self.redis_server, self.oci = root, redis_server, oci
        self.services: list[Service] = []
        self.workers: dict[str, Service] = {}
        self.http = session()
        self.controller_url = ""
        self.redis = redis_lib.Redis.from_url(redis_server.url, decode_responses=True)

    def env(self, **extra: str) -> dict[str, str]:
        return {"ELDRIC_REDIS_URL": self.redis_server.url, "ELDRIC_OLLAMA_REGISTRY": self.oci.url,
                "ELDRIC_HEARTBEAT_SECONDS": "1", "ELDRIC_RETRY_BASE_SECONDS": "0.2",
                "ELDRIC_RETRY_MAX_SECONDS": "1", "ELDRIC_PULL_RETRIES": "2",
                "ELDRIC_STALE_WORKER_SECONDS": "30",
                # Test models are tiny; a nearly full CI disk must not fail them on the 1 GiB reserve.
                "ELDRIC_DISK_RESERVE_BYTES": "0", "ELDRIC_REGISTRY_MIN_FREE": "0",
                "ELDRIC_URL_ALLOWLIST": LOOPBACK, **extra}

    def start_controller(self, **env: str) -> str:
        port = free_port()
        svc = Service(f"controller-{port}", eldric("controller", "--port", str(port)), self.root,
                      env=self.env(**env), cwd=REPO_ROOT).start()
        self.services.append(svc)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: self.http.get(f"{url}/healthz", timeout=2).ok, timeout=20,
                   message=f"controller on {url}\n{svc.log_tail()}")
        self.controller_url = url
        return url

    def start_worker(self, name: str, wtype: str = "inference", **env: str) -> Service:
        data_dir = self.root / "nodes" / name
        svc = Service(f"worker-{name}", eldric("worker", "--type", wtype, "--name", name, "--port", "0",
                                              "--data-dir", str(data_dir), "--loglevel", "INFO"),
                      self.root, env=self.env(**env), cwd=REPO_ROOT).start()
        self.services.append(svc)
        self.workers[name] = svc
        wait_until(lambda: self.redis.exists(f"eldric:worker:{name}:alive"), timeout=30,
                   message=f"worker {name} to register\n{svc.log_tail()}")
        return svc

    def store(self, name: str) -> Path:
        return self.root / "nodes" / name / "ollama" / "models"

    def api(self, method: str, path: str, **kw):
        return self.http.request(method, f"{self.controller_url}{path}", timeout=30, **kw)

    def wait_job(self, job_id: str, timeout: float = 60.0) -> dict:
        def finished():
            job = self.api("GET", f"/api/v1/models/pull-jobs/{job_id}").json()
            return job if job["state"] in ("completed", "completed_with_skipped", "failed", "cancelled") else None
        return wait_until(finished, timeout=timeout, interval=0.2, message=f"job {job_id} to finish\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log_tail(25)}" for s in self.services)

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()


@pytest.fixture(scope="module")
def cluster(workdir, redis_server, oci):
    c = Cluster(workdir, redis_server, oci)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def tiny_model(oci, workdir) -> dict:
    """An Ollama-format model (valid GGUF + template/system/params/license) in the upstream registry."""
    gguf = write_llama_gguf(workdir / "tiny.gguf", name="tiny")
    return push_ollama_model(oci.url, "library/tiny", "latest", gguf_path=gguf)


@pytest.fixture(scope="module")
def mixed_cluster(cluster, tiny_model):
    """A controller, two inference workers, a cloud worker and a data worker (which must never get model work)."""
    cluster.start_controller()
    for name, wtype in (("inf-a", "inference"), ("inf-b", "inference"), ("cloud-a", "cloud"), ("data-a", "data")):
        cluster.start_worker(name, wtype)
    return cluster
