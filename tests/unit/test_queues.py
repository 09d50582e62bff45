"""eldric.cluster.queues: the worker types, queue names and task names controller and agents share."""

from __future__ import annotations

import pytest

from eldric.cluster import queues
from eldric.cluster.queues import (
    MODEL_SERVING_TYPES,
    WORKER_PORTS,
    WORKER_TYPES,
    is_model_serving,
    is_valid_worker_id,
    queues_for,
    type_queue,
    worker_queue,
)


def test_only_inference_and_cloud_serve_models():
    assert {"inference", "cloud"} == MODEL_SERVING_TYPES
    assert [t for t in WORKER_TYPES if is_model_serving(t)] == ["inference", "cloud"]


@pytest.mark.parametrize("worker_type", ["data", "science", "training", "media", "comm", "", "Inference", None])
def test_other_types_never_take_model_work(worker_type):
    assert not is_model_serving(worker_type)


def test_worker_types_and_their_default_ports():
    assert WORKER_TYPES == ("inference", "cloud", "data", "science", "training", "media", "comm")
    assert WORKER_PORTS["inference"] == 8890
    assert WORKER_PORTS["data"] == 8892
    assert len(set(WORKER_PORTS.values())) == len(WORKER_PORTS)


def test_task_names_are_stable():
    assert (queues.TASK_PULL, queues.TASK_DISTRIBUTE, queues.TASK_DELETE, queues.TASK_INVENTORY_SYNC) == (
        "models.pull", "models.distribute", "models.delete", "inventory.sync")


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_type_queue(worker_type):
    assert type_queue(worker_type) == f"type.{worker_type}"


@pytest.mark.parametrize("worker_type", ["", "gpu", "INFERENCE", "inference ", "type.inference"])
def test_type_queue_rejects_unknown_types(worker_type):
    with pytest.raises(ValueError, match="unknown worker type"):
        type_queue(worker_type)


@pytest.mark.parametrize("worker_id", ["a", "node-1", "gpu01.rack_3", "N" * 63, "0abc"])
def test_worker_queue_for_valid_ids(worker_id):
    assert is_valid_worker_id(worker_id)
    assert worker_queue(worker_id) == f"worker.{worker_id}"


@pytest.mark.parametrize(
    "worker_id",
    ["", "N" * 64, "-node", ".node", "_node", "node/1", "node 1", "node:1", "node*", "../x", "nöde",
     None, 7],
)
def test_invalid_worker_ids_are_refused(worker_id):
    assert not is_valid_worker_id(worker_id)
    with pytest.raises(ValueError, match="invalid worker id"):
        worker_queue(worker_id)


def test_worker_id_with_a_trailing_newline_is_refused():
    assert not is_valid_worker_id("node\n")


def test_queues_for_an_agent_are_its_type_queue_then_its_own():
    assert queues_for("inference", "gpu01") == ["type.inference", "worker.gpu01"]


@pytest.mark.parametrize("worker_type, worker_id", [("gpu", "gpu01"), ("inference", "bad id")])
def test_queues_for_refuses_bad_input(worker_type, worker_id):
    with pytest.raises(ValueError):
        queues_for(worker_type, worker_id)
