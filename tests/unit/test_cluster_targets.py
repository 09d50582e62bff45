"""controller.workers: the worker list the controller reads from Redis, and pull target selection."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from eldric.cluster import workers as cluster_workers
from controller.workers import get_worker, list_workers, select_targets, worker_models
from eldric.cluster.workers import is_online as is_alive
from eldric.cluster import keys


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def register(client, worker_id: str, worker_type: str, **extra) -> None:
    info = {"id": worker_id, "type": worker_type, "address": f"http://{worker_id}:8890",
            "backends": ["ollama"], "hostname": f"host-{worker_id}", "free_disk": 123456, **extra}
    cluster_workers.register(client, info, ttl=15)


def w(worker_id: str, worker_type: str | None) -> dict:
    return {"id": worker_id, "type": worker_type}


CLUSTER = [w("cloud1", "cloud"), w("data1", "data"), w("gpu1", "inference"), w("gpu2", "inference"),
           w("sci1", "science"), w("anon", None)]


def ids(workers: list[dict]) -> list[str]:
    return [x["id"] for x in workers]


def test_default_targets_are_every_inference_and_cloud_worker():
    chosen, refused, unknown = select_targets(CLUSTER, None)
    assert ids(chosen) == ["cloud1", "gpu1", "gpu2"]
    assert (refused, unknown) == ([], [])


def test_default_targets_include_offline_workers():
    workers = [dict(w("gpu1", "inference"), online=False), dict(w("gpu2", "inference"), online=True)]
    assert ids(select_targets(workers, None)[0]) == ["gpu1", "gpu2"]


def test_explicit_targets_keep_request_order_and_drop_duplicates():
    chosen, refused, unknown = select_targets(CLUSTER, ["gpu2", "cloud1", "gpu2"])
    assert ids(chosen) == ["gpu2", "cloud1"]
    assert (refused, unknown) == ([], [])


@pytest.mark.parametrize(
    "requested, refused, unknown",
    [
        (["data1"], ["data1"], []),
        (["gpu1", "sci1", "data1"], ["sci1", "data1"], []),
        (["anon"], ["anon"], []),
        (["ghost"], [], ["ghost"]),
        (["gpu1", "ghost", "data1"], ["data1"], ["ghost"]),
        (["GPU1"], [], ["GPU1"]),
    ],
)
def test_explicit_targets_report_refused_and_unknown_ids(requested, refused, unknown):
    chosen, got_refused, got_unknown = select_targets(CLUSTER, requested)
    assert (got_refused, got_unknown) == (refused, unknown)
    assert all(x["type"] in ("inference", "cloud") for x in chosen)


def test_no_serving_workers_means_no_targets():
    assert select_targets([w("data1", "data")], None) == ([], [], [])
    assert select_targets([], None) == ([], [], [])


def test_list_workers_reads_what_agents_register(client):
    register(client, "gpu1", "inference")
    register(client, "data1", "data", address="http://data1:8892")
    cluster_workers.publish_inventory(client, "gpu1", [{"name": "tiny:latest"}, {"name": "qwen2.5:0.5b"}])

    workers = list_workers(client)

    assert ids(workers) == ["data1", "gpu1"]
    gpu = workers[1]
    assert gpu["type"] == "inference"
    assert gpu["address"] == "http://gpu1:8890"
    assert gpu["backends"] == ["ollama"]
    assert gpu["free_disk"] == 123456
    assert gpu["online"] is True
    assert gpu["hostname"] == "host-gpu1"
    assert gpu["models"] == 2
    assert abs(gpu["last_seen"] - time.time()) < 60
    assert workers[0]["models"] == 0


def test_list_workers_of_an_empty_cluster(client):
    assert list_workers(client) == []


def test_worker_without_heartbeat_is_listed_offline(client):
    register(client, "gpu1", "inference")
    cluster_workers.go_offline(client, "gpu1")
    assert [x["online"] for x in list_workers(client)] == [False]
    assert is_alive(client, "gpu1") is False


def test_long_gone_offline_worker_is_forgotten(client):
    register(client, "gone", "inference")
    register(client, "alive", "inference")
    cluster_workers.go_offline(client, "gone")
    later = time.time() + 3600

    assert ids(list_workers(client, forget_after=7200, now=later)) == ["alive", "gone"]
    assert ids(list_workers(client, forget_after=60, now=later)) == ["alive"]
    assert client.smembers(keys.WORKERS) == {"alive"}


def test_online_worker_is_never_forgotten(client):
    register(client, "gpu1", "inference")
    assert ids(list_workers(client, forget_after=1, now=time.time() + 10**6)) == ["gpu1"]


def test_registered_id_without_a_record_is_dropped(client):
    register(client, "gpu1", "inference")
    client.sadd(keys.WORKERS, "ghost")
    assert ids(list_workers(client)) == ["gpu1"]
    assert client.smembers(keys.WORKERS) == {"gpu1"}


def test_garbled_numbers_and_backends_do_not_break_the_list(client):
    client.sadd(keys.WORKERS, "odd")
    client.hset(keys.worker("odd"), mapping={"id": "odd", "type": "inference", "free_disk": "lots",
                                              "last_seen": "", "backends": "not json"})
    (odd,) = list_workers(client)
    assert (odd["free_disk"], odd["last_seen"], odd["backends"]) == (0, 0.0, [])


def test_get_worker(client):
    register(client, "gpu1", "inference")
    worker = get_worker(client, "gpu1")
    assert worker["id"] == "gpu1"
    assert worker["online"] is True
    assert get_worker(client, "ghost") is None


def test_worker_models_sorted_by_name(client):
    register(client, "gpu1", "inference")
    cluster_workers.publish_inventory(client, "gpu1", [{"name": "b:latest", "size": 2}, {"name": "a:latest", "size": 1}])
    assert [m["name"] for m in worker_models(client, "gpu1")] == ["a:latest", "b:latest"]
    assert json.loads(client.hget(keys.worker_models("gpu1"), "a:latest"))["size"] == 1


def test_listed_workers_feed_target_selection(client):
    register(client, "gpu1", "inference")
    register(client, "cloud1", "cloud")
    register(client, "data1", "data")
    cluster_workers.go_offline(client, "cloud1")
    chosen, _, _ = select_targets(list_workers(client), None)
    assert ids(chosen) == ["cloud1", "gpu1"]
