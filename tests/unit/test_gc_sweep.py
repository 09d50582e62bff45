"""The GC sweep (worker_agent/gc_sweep.py) over a real store, catalog and backend directories, Redis faked."""

from __future__ import annotations

import json
import os
import time

import fakeredis
import pytest

from eldric.cluster import gc, maintenance
from eldric.cluster import workers as cluster_workers
from eldric.cluster.queues import TASK_GC_SWEEP, worker_queue
from eldric.core.digests import Digest
from eldric.core.names import ModelName
from worker_agent import gc_sweep
from tests.unit.test_debris_sweep import HOUR, age, installed, orphan
from tests.unit.test_install_rollback import make_agent
from tests.unit.test_pulling import BLOBS, manifest_bytes

KEPT = ModelName.parse("kept")
T0 = 1_000_000.0


@pytest.fixture
def agent(tmp_path):
    return make_agent(tmp_path, "llamacpp,vllm")


def pulled(agent) -> None:
    """A store model: its manifest references every blob of BLOBS."""
    for data in BLOBS.values():
        agent.store.blobs.put_bytes(data)
    agent.store.write_manifest(KEPT, manifest_bytes(BLOBS))


def ids(result) -> list[str]:
    return sorted(f.id for f in result.finds)


def blob_id(data: bytes) -> str:
    return f"blob:{Digest.of_bytes(data)}"


def test_an_unreferenced_blob_is_found_and_referenced_ones_are_not(agent, tmp_path):
    pulled(agent)
    orphan_digest = agent.store.blobs.put_bytes(b"nobody's bytes")
    catalogued = installed(agent, tmp_path, "acme/kept:v1")  # its files are blobs a catalog entry lists
    linked = agent.store.blobs.put_bytes(b"a gguf a backend serves")
    os.link(agent.store.blobs.path(linked), tmp_path / "served.gguf")  # a backend file: same inode

    result = gc_sweep.sweep(agent, remove=False, grace=0, now=T0)

    assert [f.id for f in result.finds if f.kind == gc.BLOB] == [f"blob:{orphan_digest}"]
    find = next(f for f in result.finds if f.kind == gc.BLOB)
    assert (find.bytes, find.digest, find.first_seen, find.removable_at) == (14, str(orphan_digest), T0, T0)
    assert result.removed == [] and agent.store.blobs.has(orphan_digest)  # remove=False: a dry look
    assert catalogued["files"]  # the catalog's blobs were there to be spared
    published = gc.report(agent.redis, ["w"])[0]
    assert [f["id"] for f in published["finds"]] == [f"blob:{orphan_digest}"] and published["swept_at"] == T0


def test_a_find_is_removed_only_after_the_grace_period_and_its_bytes_are_counted(agent):
    pulled(agent)
    digest = agent.store.blobs.put_bytes(b"x" * 1000)

    first = gc_sweep.sweep(agent, remove=True, grace=100, now=T0)
    assert first.removed == [] and first.finds[0].removable_at == T0 + 100
    later = gc_sweep.sweep(agent, remove=True, grace=100, now=T0 + 99)
    assert later.removed == [] and later.finds[0].first_seen == T0  # the first sight counts, not this one
    assert agent.store.blobs.has(digest)

    due = gc_sweep.sweep(agent, remove=True, grace=100, now=T0 + 100)
    assert [f.id for f in due.removed] == [f"blob:{digest}"] and due.finds == []
    assert not agent.store.blobs.has(digest)
    assert all(agent.store.blobs.has(Digest.of_bytes(d)) for d in BLOBS.values())  # the model's blobs stay
    assert gc.bytes_totals(agent.redis) == {"w": 1000}
    assert gc.report(agent.redis, ["w"])[0]["removed_bytes"] == 1000


def test_a_find_referenced_again_is_dropped_and_starts_over(agent):
    data = BLOBS["model"]
    digest = agent.store.blobs.put_bytes(data)
    assert blob_id(data) in ids(gc_sweep.sweep(agent, remove=True, grace=100, now=T0))

    pulled(agent)  # a pull's manifest references it now
    assert blob_id(data) not in ids(gc_sweep.sweep(agent, remove=True, grace=100, now=T0 + 50))
    assert gc.read_finds(agent.redis, "w") == {}

    agent.store.delete_model(KEPT, keep=lambda: {digest.hex})  # garbage again, from now on
    again = gc_sweep.sweep(agent, remove=True, grace=100, now=T0 + 150)
    assert again.removed == [] and agent.store.blobs.has(digest)  # T0 + 150 is past T0's grace: not counted
    assert next(f for f in again.finds if f.id == blob_id(data)).first_seen == T0 + 150


def test_a_blob_a_running_job_leased_is_never_removed(agent):
    digest = agent.store.blobs.put_bytes(b"a pull is about to reference this")
    gc_sweep.sweep(agent, remove=False, grace=0, now=T0)  # found while unleased
    with agent.store.leases.hold("job1", [digest]):
        result = gc_sweep.sweep(agent, remove=True, grace=0, now=T0 + HOUR)
        assert result.removed == [] and f"blob:{digest}" not in ids(result)
        assert agent.store.blobs.has(digest)
    assert [f.id for f in gc_sweep.sweep(agent, remove=True, grace=0).removed] == [f"blob:{digest}"]


def test_a_lease_taken_between_the_look_and_the_removal_keeps_the_blob(agent, monkeypatch):
    digest = agent.store.blobs.put_bytes(b"leased at the last moment")
    real, held = gc_sweep._blobs, []

    def look_then_lease(a):
        found = real(a)
        held.append(a.store.leases.hold("job2", [digest]))
        held[0].__enter__()  # a pull starts right after the look: the removal's own look must see its lease
        return found
    monkeypatch.setattr(gc_sweep, "_blobs", look_then_lease)
    result = gc_sweep.sweep(agent, remove=True, grace=0, now=T0)
    held[0].__exit__(None, None, None)
    assert result.removed == [] and agent.store.blobs.has(digest)
    assert f"blob:{digest}" in ids(result)  # still listed: the next sweep decides again


def test_stale_partials_and_temp_files_are_found_and_removed_after_grace(agent):
    partial = agent.store.partial_dir / ("sha256-" + "a" * 64)
    partial.write_bytes(b"p" * 4096)
    (agent.store.partial_dir / f"{partial.name}.json").write_text(json.dumps({"owner": None, "parts": []}))
    fresh = agent.store.partial_dir / ("sha256-" + "b" * 64)
    fresh.write_bytes(b"still downloading")
    temp = agent.store.blobs.root / ".incoming-xyz"
    temp.write_bytes(b"t" * 10)
    for p in (partial, partial.with_name(f"{partial.name}.json"), temp):
        age(p, 2 * 86400)

    first = gc_sweep.sweep(agent, remove=True, grace=60, now=time.time())
    assert sorted(f.id for f in first.finds if f.kind == gc.PARTIAL) == [
        "partial:blobs/.incoming-xyz", f"partial:{partial.name}"]
    assert first.removed == [] and partial.exists()

    due = gc_sweep.sweep(agent, remove=True, grace=60, now=time.time() + 60)
    assert sorted(f.id for f in due.removed) == ["partial:blobs/.incoming-xyz", f"partial:{partial.name}"]
    assert not partial.exists() and not temp.exists() and fresh.exists()
    assert gc.bytes_totals(agent.redis)["w"] >= 4096


def test_backend_debris_goes_after_grace_and_a_hand_placed_entry_is_only_listed(agent, tmp_path):
    installed(agent, tmp_path, "acme/kept:v1")
    orphan(agent, tmp_path, "acme/st-notok:v1")
    by_hand = tmp_path / "backends" / "vllm" / "operators-model"
    by_hand.mkdir(parents=True)
    (by_hand / "config.json").write_text("{}")
    age(by_hand, 2 * HOUR)

    now = time.time()
    first = gc_sweep.sweep(agent, remove=True, grace=HOUR, now=now)
    debris = {f.path.rsplit("/", 1)[-1]: f for f in first.finds if f.kind == gc.DEBRIS}
    assert sorted(debris) == ["acme--st-notok--v1", "operators-model"]
    assert debris["operators-model"].note and not debris["acme--st-notok--v1"].note
    assert first.removed == []

    due = gc_sweep.sweep(agent, remove=True, grace=HOUR, now=now + HOUR)
    assert [f.path.rsplit("/", 1)[-1] for f in due.removed] == ["acme--st-notok--v1"]
    assert not (tmp_path / "backends" / "vllm" / "acme--st-notok--v1").exists() and by_hand.is_dir()
    assert [f.path.rsplit("/", 1)[-1] for f in due.finds if f.kind == gc.DEBRIS] == ["operators-model"]
    assert (tmp_path / "backends" / "vllm" / "acme--kept--v1").is_dir()


def test_every_online_worker_is_asked_data_nodes_too(agent):
    r = agent.redis
    for wid, wtype in (("inf", "inference"), ("data", "data")):
        cluster_workers.register(r, {"id": wid, "type": wtype, "address": f"http://{wid}", "backends": []}, ttl=15)
    sent = []

    def send(task, args, worker_ids):
        sent.extend((task, args, worker_queue(w)) for w in worker_ids)
        return {}

    assert sorted(maintenance.request_gc_sweep(r, send, remove=True, partial_max_age=60.0)) == ["data", "inf"]
    assert sorted(sent) == [(TASK_GC_SWEEP, [True, 60.0], "worker.data"), (TASK_GC_SWEEP, [True, 60.0], "worker.inf")]


# --- the controller's /api/v1/gc and /metrics -------------------------------------------------

@pytest.fixture
def api(monkeypatch):
    from controller import create_app
    from controller import gc as controller_gc
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "", "CHECK_UPSTREAM": False})
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    app.extensions["eldric.redis"] = r
    for wid in ("inf-a", "inf-b"):
        cluster_workers.register(r, {"id": wid, "type": "inference", "address": "http://x", "backends": []}, ttl=15)
    sent = []
    monkeypatch.setattr(controller_gc, "job_sender", lambda producer: lambda task, args, ids: sent.append(
        (task, args, sorted(ids))) or {})
    return app.test_client(), r, sent


def test_the_api_lists_every_workers_finds_and_asks_for_a_sweep(api):
    client, r, sent = api
    orphan_find = gc.Find(id="blob:sha256:" + "c" * 64, kind=gc.BLOB, path="/m/blobs/sha256-" + "c" * 64, bytes=7,
                          digest="sha256:" + "c" * 64, first_seen=T0, removable_at=T0 + 3600)
    gc.publish(r, "inf-a", [orphan_find], swept_at=T0, grace=3600, removed=[])
    gc.publish(r, "inf-a", [orphan_find], swept_at=T0 + 1, grace=3600,
               removed=[gc.Find(id="partial:x", kind=gc.PARTIAL, path="/p/x", bytes=5, first_seen=T0, removable_at=T0)])

    body = client.get("/api/v1/gc").json
    a, b = sorted(body["workers"], key=lambda w: w["worker"])
    assert (a["worker"], a["online"], a["swept_at"], a["removed_bytes"], a["bytes"]) == ("inf-a", True, T0 + 1, 5, 7)
    assert a["finds"] == [orphan_find.to_json()]
    assert (b["worker"], b["swept_at"], b["finds"]) == ("inf-b", None, [])
    assert (body["finds"], body["bytes"], body["removed_bytes_total"]) == (1, 7, 5)

    resp = client.post("/api/v1/gc", json={})
    assert resp.status_code == 202 and resp.json["asked"] == ["inf-a", "inf-b"] and resp.json["remove"] is True
    assert sent == [(TASK_GC_SWEEP, [True, None], ["inf-a", "inf-b"])]
    assert client.post("/api/v1/gc", json={"remove": False}).json["remove"] is False
    for wrong in ("yes please", 0, 1, None):  # the document says boolean: marshmallow's truthy values are refused
        assert client.post("/api/v1/gc", json={"remove": wrong}).status_code == 422, wrong

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'eldric_gc_bytes_total{worker="inf-a"} 5.0' in metrics
    assert 'eldric_gc_bytes_total{worker="inf-b"} 0.0' in metrics
