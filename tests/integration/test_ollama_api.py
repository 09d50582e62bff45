"""The official `ollama` Python client, pointed at the controller, manages the whole cluster."""

from __future__ import annotations

import ollama
import pytest
import requests

from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import corrupt_blob, push_ollama_model
from testbed.processes import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(mixed_cluster):
    return mixed_cluster


@pytest.fixture(scope="module")
def client(live):
    return ollama.Client(host=live.controller_url, trust_env=False)


def test_pull_streams_ollama_progress_to_success_and_every_worker_has_it(live, client, tiny_model):
    parts = list(client.pull("tiny", stream=True))
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [p for p in parts if p.digest]
    assert progress, statuses
    assert all(p.status.startswith("pulling ") for p in progress)
    completed = [p.completed for p in progress]
    assert completed == sorted(completed), "one bar that only moves forward"
    assert progress[-1].completed == progress[-1].total > 0
    for node in ("inf-a", "inf-b", "cloud-a"):
        assert (live.store(node) / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest").exists()
    assert not (live.store("data-a") / "manifests" / "registry.ollama.ai").exists()
    jobs = live.api("GET", "/api/v1/models/pull-jobs").json()["jobs"]
    assert jobs[0]["model"] == "tiny:latest" and jobs[0]["state"] == "completed"


def test_list_show_match_the_v1_api(live, client):
    listed = client.list()
    names = [m.model for m in listed.models]
    assert names == ["tiny:latest"]
    v1 = {m["name"]: m for m in live.api("GET", "/api/v1/models").json()["models"]}
    tiny = listed.models[0]
    assert tiny.size == v1["tiny:latest"]["size"]
    assert "sha256:" + tiny.digest == v1["tiny:latest"]["digest"]
    assert tiny.details.family == "llama" and tiny.details.format == "gguf"
    shown = client.show("tiny")
    assert shown.template == "{{ .Prompt }}"
    assert shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"
    v1_show = live.api("POST", "/api/v1/models/show", json={"model": "tiny"}).json()
    assert shown.modelfile == v1_show["modelfile"]


def test_pull_non_streaming_answers_once(client):
    assert client.pull("tiny", stream=False).status == "success"


def test_failing_pull_is_the_clients_response_error_naming_workers(live, client, workdir):
    # Upstream has the manifest (an unknown one is refused before any worker is asked: test_refuse_early.py),
    # but serves a layer whose bytes do not match its digest: every worker fails, each named.
    pushed = push_ollama_model(live.oci.url, "library/broken-bytes", "v1",
                               gguf_path=write_llama_gguf(workdir / "broken-bytes.gguf", name="broken", width=80))
    corrupt_blob(live.oci.root, pushed["layers"]["application/vnd.ollama.image.model"])
    with pytest.raises(ollama.ResponseError) as err:
        list(client.pull("broken-bytes:v1", stream=True))
    assert "inf-a" in str(err.value) and "digest mismatch" in str(err.value)
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("broken-bytes:v1", stream=False)
    assert err.value.status_code == 502 and "digest mismatch" in str(err.value)


def test_delete_removes_from_every_worker_then_404(live, client):
    client.delete("tiny")
    for node in ("inf-a", "inf-b", "cloud-a"):
        assert not (live.store(node) / "manifests" / "registry.ollama.ai" / "library" / "tiny").exists()
    wait_until(lambda: client.list().models == [], message="tags to empty")
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("tiny")
    assert err.value.status_code == 404


def test_token_rules_apply_to_ollama_endpoints(cluster):
    url = cluster.start_controller(ELDRIC_API_TOKEN="tok")
    assert requests.get(f"{url}/api/tags", timeout=5).status_code == 401
    authed = ollama.Client(host=url, headers={"Authorization": "Bearer tok"}, trust_env=False)
    assert authed.list().models is not None
