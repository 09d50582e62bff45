"""The cluster's model views over a live cluster: unified list, one worker's models, show, delete."""

from __future__ import annotations

import pytest

from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import push_ollama_model
from testbed.processes import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(cluster, tiny_model, oci, workdir):
    cluster.start_controller(ELDRIC_CLUSTER_SECRET="cluster-s3cret")
    for name in ("inf-a", "inf-b"):
        cluster.start_worker(name, "inference", ELDRIC_CLUSTER_SECRET="cluster-s3cret")
    cluster.start_worker("data-a", "data", ELDRIC_CLUSTER_SECRET="cluster-s3cret")
    # A second model sharing nothing with tiny, pulled only to inf-a.
    other = write_llama_gguf(workdir / "other.gguf", name="other", width=96)
    push_ollama_model(oci.url, "library/other", "q4", gguf_path=other)
    for body in ({"model": "tiny"}, {"model": "other:q4", "workers": ["inf-a"]}):
        job = cluster.api("POST", "/api/v1/models/pull", json=body).json()
        assert cluster.wait_job(job["id"])["state"] == "completed"
    return cluster


def test_cluster_model_list_shows_workers_and_coverage(live, tiny_model):
    body = live.api("GET", "/api/v1/models").json()
    assert body["eligible_workers"] == 2
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"tiny:latest", "other:q4"}
    tiny = by_name["tiny:latest"]
    assert tiny["workers"] == ["inf-a", "inf-b"] and tiny["coverage"] == 100.0 and tiny["consistent"]
    assert tiny["size"] == sum(layer["size"] for layer in tiny_model["manifest"]["layers"]) + tiny_model["manifest"]["config"]["size"]
    assert tiny["details"]["family"] == "llama"
    other = by_name["other:q4"]
    assert other["workers"] == ["inf-a"] and other["coverage"] == 50.0 and other["missing"] == ["inf-b"]


def test_worker_models_list_local_models_with_size_and_date(live):
    models = live.api("GET", "/api/v1/workers/inf-a/models").json()["models"]
    assert [m["name"] for m in models] == ["other:q4", "tiny:latest"]
    assert all(m["size"] > 0 and m["modified_at"] > 0 and m["backend"] == "ollama" for m in models)
    assert live.api("GET", "/api/v1/workers/nope/models").status_code == 404


def test_show_answers_in_ollamas_shape(live):
    resp = live.api("POST", "/api/v1/models/show", json={"model": "tiny"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["template"] == "{{ .Prompt }}" and body["system"] == "You are a test."
    assert "MIT" in body["license"]
    assert "stop" in body["parameters"] and "<|im_end|>" in body["parameters"]
    assert body["details"]["family"] == "llama" and body["details"]["format"] == "gguf"
    assert body["model_info"]["general.architecture"] == "llama"
    assert body["model_info"]["general.parameter_count"] > 0
    assert body["modelfile"].startswith("# Modelfile") and "FROM " in body["modelfile"]
    assert live.api("POST", "/api/v1/models/show", json={"model": "ghost"}).status_code == 404


def test_agent_endpoints_need_the_cluster_secret(live):
    worker = live.api("GET", "/api/v1/workers/inf-a").json()
    assert live.http.get(f"{worker['address']}/api/show", params={"model": "tiny"}, timeout=5).status_code == 401
    ok = live.http.get(f"{worker['address']}/api/show", params={"model": "tiny"}, timeout=5,
                       headers={"Authorization": "Bearer cluster-s3cret"})
    assert ok.status_code == 200
    assert live.http.get(f"{worker['address']}/healthz", timeout=5).status_code == 200


def test_delete_from_one_worker_keeps_it_elsewhere_and_keeps_shared_blobs(live, tiny_model):
    job = live.api("POST", "/api/v1/models/delete", json={"model": "tiny", "workers": ["inf-b"]}).json()
    assert live.wait_job(job["id"])["state"] == "completed"
    store_b = live.store("inf-b")
    assert not (store_b / "manifests" / "registry.ollama.ai" / "library" / "tiny").exists()
    assert not list((store_b / "blobs").glob("sha256-*"))
    assert (live.store("inf-a") / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest").exists()
    tiny = next(m for m in live.api("GET", "/api/v1/models").json()["models"] if m["name"] == "tiny:latest")
    assert tiny["workers"] == ["inf-a"] and tiny["coverage"] == 50.0


def test_delete_everywhere_then_unknown_is_404(live):
    job = live.api("POST", "/api/v1/models/delete", json={"model": "other:q4"}).json()
    assert job["targets"] == ["inf-a"]
    assert live.wait_job(job["id"])["state"] == "completed"
    # tiny's blobs on inf-a are untouched by deleting other.
    assert (live.store("inf-a") / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest").exists()
    assert live.api("POST", "/api/v1/models/delete", json={"model": "other:q4"}).status_code == 404
    wait_until(lambda: all(m["name"] != "other:q4" for m in live.api("GET", "/api/v1/models").json()["models"]),
               message="other:q4 to leave the cluster list")
