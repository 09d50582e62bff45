"""The debris sweep (worker_agent/debris_sweep.py) over real backend directories, without Triton or Ollama."""

from __future__ import annotations

import json
import os
import time

import pytest

from eldric.cluster import keys
from eldric.cluster import workers as cluster_workers
from eldric.cluster import maintenance
from eldric.cluster.jobs.store import create_job
from eldric.cluster.queues import worker_queue
from eldric.core.digests import Digest
from worker_agent import debris_sweep
from worker_agent.installing import install_and_list
from worker_agent.installers.staging import FILE_RECORDS, RECORD
from tests.unit.test_install_rollback import backend_dir, make_agent, plan_of, st_entry
from testbed.gguf_models import write_llama_gguf

HOUR = 3600.0


def age(path, seconds: float) -> None:
    """Make an install look `seconds` old (its record's mtime is when it was placed)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def installed(agent, tmp_path, name: str, *, old: bool = True) -> dict:
    entry = install_and_list(agent, st_entry(agent, tmp_path, name, tokenizer=True),
                             plan_of(agent, st_entry(agent, tmp_path, name, tokenizer=True)))
    if old:
        for backend in entry["installed"]:
            age(backend_dir(tmp_path, backend) / entry["installed"][backend]["location"].rsplit("/", 1)[-1] / RECORD,
                2 * HOUR)
    return entry


def orphan(agent, tmp_path, name: str, *, old: bool = True) -> dict:
    """An install the catalog does not list (finding 3 of issue 22)."""
    entry = installed(agent, tmp_path, name, old=old)
    agent.catalog.delete(name)
    return entry


@pytest.fixture
def agent(tmp_path):
    return make_agent(tmp_path, "llamacpp,vllm")


def test_report_lists_orphans_only_and_removes_nothing(agent, tmp_path):
    installed(agent, tmp_path, "acme/kept:v1")
    orphan(agent, tmp_path, "acme/st-notok:v1")
    result = debris_sweep.sweep_debris(agent, debris_sweep.REPORT)
    assert [(d.backend, d.name, d.placed_by_eldric, d.removed) for d in result.found] == [
        ("vllm", "acme--st-notok--v1", True, False)]
    assert result.found[0].bytes > 0
    assert (backend_dir(tmp_path, "vllm") / "acme--st-notok--v1").is_dir()
    published = agent.redis.hgetall(keys.worker_debris("w"))
    assert list(published) == [result.found[0].path]
    assert json.loads(published[result.found[0].path])["name"] == "acme--st-notok--v1"


def test_remove_takes_eldrics_orphans_and_never_a_hand_placed_model(agent, tmp_path):
    installed(agent, tmp_path, "acme/kept:v1")
    orphan(agent, tmp_path, "acme/st-notok:v1")
    hand = backend_dir(tmp_path, "llamacpp") / "operator-model.gguf"
    hand.parent.mkdir(parents=True)
    write_llama_gguf(hand, name="operator")
    age(hand, 2 * HOUR)
    result = debris_sweep.sweep_debris(agent, debris_sweep.REMOVE)
    by_name = {d.name: d for d in result.found}
    assert by_name["acme--st-notok--v1"].removed and by_name["operator-model"].removed is False
    assert not by_name["operator-model"].placed_by_eldric
    assert not (backend_dir(tmp_path, "vllm") / "acme--st-notok--v1").exists()
    assert hand.is_file() and (backend_dir(tmp_path, "vllm") / "acme--kept--v1").is_dir()
    # the report keeps what is still there
    assert list(agent.redis.hgetall(keys.worker_debris("w"))) == [str(hand)]


def test_what_a_running_job_installs_is_never_debris(agent, tmp_path):
    # placed a moment ago: its catalog entry may be on its way
    orphan(agent, tmp_path, "acme/fresh:v1", old=False)
    # older, but a job this worker has not finished is about it (a retry between two tries)
    orphan(agent, tmp_path, "acme/retrying:v1")
    job = create_job(agent.redis, kind="distribute", model="acme/retrying:v1", targets=["w"], source="registry",
                     deadline_seconds=60)
    agent.redis.sadd(keys.worker_jobs("w"), job)
    # older, unknown to Redis, but its blob is leased by a running job
    leased = orphan(agent, tmp_path, "acme/leased:v1")
    weights = next(f for f in leased["files"] if f["path"] == "model.safetensors")
    with agent.store.leases.hold("some-job", [Digest.parse(weights["sha256"])]):
        result = debris_sweep.sweep_debris(agent, debris_sweep.REMOVE)
    assert result.found == []
    for name in ("acme--fresh--v1", "acme--retrying--v1", "acme--leased--v1"):
        assert (backend_dir(tmp_path, "vllm") / name).is_dir()


def test_a_pulled_models_gguf_belongs_to_its_store_manifest(agent, tmp_path):
    """A pull places `<slug>.gguf` for llama.cpp; the store's manifest owns it, the catalog has nothing."""
    gguf = backend_dir(tmp_path, "llamacpp") / "tiny.gguf"
    gguf.parent.mkdir(parents=True)
    write_llama_gguf(gguf, name="tiny")
    (gguf.parent / FILE_RECORDS).mkdir()
    (gguf.parent / FILE_RECORDS / "tiny.gguf.json").write_text("{}")
    age(gguf.parent / FILE_RECORDS / "tiny.gguf.json", 2 * HOUR)
    agent.store.list_models = lambda: [{"name": "tiny:latest"}]
    assert debris_sweep.sweep_debris(agent, debris_sweep.REMOVE).found == []
    agent.store.list_models = lambda: []
    [found] = debris_sweep.sweep_debris(agent, debris_sweep.REMOVE).found
    assert (found.backend, found.name, found.removed) == ("llamacpp", "tiny", True) and not gguf.exists()


def test_only_inference_and_cloud_workers_are_asked(agent):
    r = agent.redis
    for wid, wtype in (("inf", "inference"), ("cloud", "cloud"), ("data", "data")):
        cluster_workers.register(r, {"id": wid, "type": wtype, "address": f"http://{wid}", "backends": []}, ttl=15)
    sent = []

    def send(task, args, worker_ids):
        sent.extend((task, args, worker_queue(w)) for w in worker_ids)
        return {}

    assert sorted(maintenance.request_debris_sweep(r, send)) == ["cloud", "inf"]
    assert sorted(sent) == [("maintenance.sweep_debris", [], "worker.cloud"), ("maintenance.sweep_debris", [], "worker.inf")]


def test_the_action_setting_refuses_anything_but_report_or_remove(tmp_path):
    from worker_agent.settings import AgentSettings
    assert AgentSettings.from_env({}, worker_id="w", worker_type="inference", data_dir=tmp_path).debris_sweep == "report"
    with pytest.raises(Exception, match="debris_sweep"):
        AgentSettings.from_env({"ELDRIC_DEBRIS_SWEEP": "delete"}, worker_id="w", worker_type="inference",
                               data_dir=tmp_path)
