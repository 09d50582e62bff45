"""What an agent tells the cluster about itself (issue 12): backends only where it serves models,
absolute directories, its upstream registry without credentials; and the controller's view of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fakeredis
import pytest

from eldric.cluster import workers as cluster_workers
from controller.workers import get_worker, list_workers
from worker_agent.main import declared_backends, worker_info
from worker_agent.settings import AgentSettings


def settings(wtype: str, **env: str) -> AgentSettings:
    return AgentSettings.from_env({"ELDRIC_WORKER_NAME": "w1", "ELDRIC_WORKER_TYPE": wtype, **env})


@pytest.mark.parametrize("wtype", ["data", "science", "training", "media", "comm"])
def test_non_serving_types_advertise_no_backends(wtype: str, tmp_path: Path) -> None:
    s = settings(wtype, ELDRIC_DATA_DIR=str(tmp_path), ELDRIC_BACKENDS="ollama,llamacpp,vllm")
    info = worker_info(s, "http://127.0.0.1:1")
    assert info["backends"] == [] and json.loads(info["backend_details"]) == {} == declared_backends(s)


def test_serving_types_advertise_absolute_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = settings("inference", ELDRIC_DATA_DIR="node", ELDRIC_BACKENDS="ollama,llamacpp,vllm")
    info = worker_info(s, "http://127.0.0.1:1")
    assert info["backends"] == ["ollama", "llamacpp", "vllm"]
    assert info["data_dir"] == str(tmp_path / "node")
    details = json.loads(info["backend_details"])
    assert details["ollama-store"]["models_dir"] == str(tmp_path / "node" / "ollama" / "models")
    assert all(os.path.isabs(d["models_dir"]) for d in details.values() if d.get("models_dir"))


def test_the_upstream_registry_is_shown_with_its_credentials_masked(tmp_path: Path) -> None:
    s = settings("inference", ELDRIC_DATA_DIR=str(tmp_path),
                 ELDRIC_OLLAMA_REGISTRY="http://mirror:s3cret@10.0.0.9:5000")
    assert worker_info(s, "http://127.0.0.1:1")["upstream_registry"] == "http://***@10.0.0.9:5000"


def test_the_controller_shows_data_dir_and_upstream_registry(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    s = settings("inference", ELDRIC_DATA_DIR=str(tmp_path), ELDRIC_OLLAMA_REGISTRY="http://10.0.0.9:5000")
    cluster_workers.register(client, worker_info(s, "http://127.0.0.1:1"), ttl=15)
    view = get_worker(client, "w1")
    assert view["data_dir"] == str(tmp_path) and view["upstream_registry"] == "http://10.0.0.9:5000"


def test_the_worker_list_shows_each_worker_as_the_single_worker_view(tmp_path: Path) -> None:
    """GET /workers reads only the record fields it shows (one script call for all workers): every field
    an agent writes reaches the list as it reaches GET /workers/{id}; a vanished record leaves the set."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    for name, wtype in (("w1", "inference"), ("w2", "data")):
        s = AgentSettings.from_env({"ELDRIC_WORKER_NAME": name, "ELDRIC_WORKER_TYPE": wtype,
                                    "ELDRIC_DATA_DIR": str(tmp_path / name)})
        cluster_workers.register(client, worker_info(s, f"http://{name}:1"), ttl=15)
    cluster_workers.publish_inventory(client, "w1", [{"name": "m:latest", "digest": "sha256:" + "a" * 64}])
    cluster_workers.go_offline(client, "w2")
    client.sadd("eldric:workers", "gone")
    assert list_workers(client) == [get_worker(client, "w1"), get_worker(client, "w2")]
    assert list_workers(client)[0]["models"] == 1 and [w["online"] for w in list_workers(client)] == [True, False]
    assert client.smembers("eldric:workers") == {"w1", "w2"}


def test_a_record_holding_none_of_the_shown_fields_is_listed_and_one_without_a_hash_is_forgotten() -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    client.sadd("eldric:workers", "odd", "gone")
    client.hset("eldric:worker:odd", "something", "else")  # as HGETALL showed it: every shown field None
    assert [(w["id"], w["type"], w["models"]) for w in list_workers(client)] == [(None, None, 0)]
    assert client.smembers("eldric:workers") == {"odd"}
