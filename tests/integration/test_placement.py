"""Placement (issue 25) on four real agents whose data dirs are tmpfs of different sizes, labelled zone=a/b
(ELDRIC_LABELS): replicas=2 of 4 goes to the two with most room, a second pull's holders come first, a spread
over two zones takes the roomiest of each, and a model bigger than the smallest disk skips it, saying why.

Free disk is what each agent reports from its store's filesystem (here the tmpfs), so the order is the
sizes': pl-d (128m, a) > pl-c (96m, a) > pl-b (64m, b) > pl-a (16m, b).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from testbed.disks import MountError, small_tmpfs
from testbed.gguf_models import write_gguf_of_size, write_llama_gguf
from testbed.oci_registry import push_ollama_model
from testbed.processes import wait_until

pytestmark = pytest.mark.integration

MB = 1 << 20
NODES = {"pl-a": ("16m", "b"), "pl-b": ("64m", "b"), "pl-c": ("96m", "a"), "pl-d": ("128m", "a")}


@pytest.fixture(scope="module")
def fleet(cluster, oci, workdir):
    for name in ("pltiny", "plspread"):
        push_ollama_model(oci.url, f"library/{name}", "latest", gguf_path=write_llama_gguf(workdir / f"{name}.gguf",
                                                                                         name=name))
    push_ollama_model(oci.url, "library/plbig", "latest",
                      gguf_path=write_gguf_of_size(workdir / "plbig.gguf", 24 * MB, name="plbig"))
    with ExitStack() as stack:
        try:
            for name, (size, _zone) in NODES.items():
                stack.enter_context(small_tmpfs(cluster.root / "nodes" / name, size))
        except MountError as exc:
            pytest.skip(str(exc))
        cluster.start_controller(ELDRIC_PLACEMENT_RESERVE_BYTES="1M")
        with ThreadPoolExecutor(len(NODES)) as pool:  # the agents start together: each takes seconds to import
            list(pool.map(lambda item: cluster.start_worker(item[0], ELDRIC_LABELS=f"zone={item[1][1]}"),
                          NODES.items()))
        wait_until(lambda: all(cluster.redis.hget(f"eldric:worker:{n}", "free_disk") for n in NODES), timeout=10,
                   message="every agent to report its free disk")
        yield cluster
        cluster.stop()  # before the tmpfs go


def pull(cluster, model: str, **body) -> dict:
    resp = cluster.api("POST", "/api/v1/models/pull", json={"model": model, **body})
    assert resp.status_code == 202, resp.text
    return cluster.wait_job(resp.json()["id"])


def holders(cluster, model: str) -> set[str]:
    return {n for n in NODES if cluster.redis.hexists(f"eldric:worker:{n}:models", f"{model}:latest")}


def test_two_replicas_go_to_most_room_then_holders_first(fleet):
    job = pull(fleet, "pltiny", replicas=2)
    assert job["state"] == "completed", job
    assert sorted(job["targets"]) == ["pl-c", "pl-d"]
    assert all(w["placement_reason"].startswith("room:") for w in job["workers"])
    wait_until(lambda: holders(fleet, "pltiny") == {"pl-c", "pl-d"}, timeout=10, message="the two copies")
    again = pull(fleet, "pltiny", replicas=3)
    reasons = {w["worker"]: w["placement_reason"] for w in again["workers"]}
    assert reasons["pl-c"] == reasons["pl-d"] == "holds it"
    assert reasons["pl-b"].startswith("room:") and "pl-a" not in reasons
    assert again["state"] == "completed"


def test_spread_over_two_zones(fleet):
    job = pull(fleet, "plspread", replicas=2, spread="zone")
    assert job["state"] == "completed", job
    assert sorted(job["targets"]) == ["pl-b", "pl-d"]  # the roomiest of zone a and of zone b
    wait_until(lambda: holders(fleet, "plspread") == {"pl-b", "pl-d"}, timeout=10, message="one copy per zone")


def test_a_model_bigger_than_a_disk_skips_it_saying_why(fleet):
    job = pull(fleet, "plbig", replicas=4, selector={"zone": "b"})
    assert job["state"] == "completed_with_skipped", job
    parts = {w["worker"]: w for w in job["workers"]}
    assert parts["pl-b"]["state"] == "completed"
    assert parts["pl-a"]["state"] == "skipped"
    assert parts["pl-a"]["placement_reason"].startswith("no room: needs 24.")
    assert holders(fleet, "plbig") == {"pl-b"}
