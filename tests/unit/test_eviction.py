"""Eviction (worker_agent/eviction.py), the watermarks (worker_agent/watermarks.py) and last use
(worker_agent/last_use.py) over fakeredis and tmp dirs: the LRU choice, every protection, make_room."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from controller.schemas import PullRequestSchema, transfer_caps
from eldric.cluster import keys, pins
from eldric.cluster.jobs.store import create_job
from eldric.core.digests import Digest
from eldric.transfer.errors import InsufficientSpaceError
from worker_agent import eviction, last_use
from worker_agent.catalog import Catalog
from worker_agent.ollama_store import OllamaStore
from worker_agent.settings import AgentSettings
from worker_agent.watermarks import Watermark, Watermarks
from tests.unit.test_pulling import MODEL_BLOB, NAME, RAW, TEMPLATE_BLOB

GIB = 1 << 30
DAY = 86400.0


# --- watermarks --------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, percent, used", [("90%", 90.0, None), (" 85.5 % ", 85.5, None), ("40G", None, 40 * GIB),
                                                 ("512M", None, 512 << 20), ("1T", None, 1 << 40)])
def test_a_watermark_is_a_share_of_the_disk_or_bytes_used(raw, percent, used):
    w = Watermark.parse(raw)
    assert (w.percent, w.used_bytes) == (percent, used)


@pytest.mark.parametrize("raw", ["", "off", "  "])
def test_no_watermark_means_no_eviction(raw):
    assert Watermark.parse(raw) is None and not Watermarks.parse(raw, "").enabled
    assert Watermarks.parse(raw, "").bounds(100 * GIB) is None


@pytest.mark.parametrize("high, low, message", [("lots", "", "not a watermark"), ("150%", "", "at most 100"),
                                                 ("0%", "", "over 0"), ("90%", "95%", "above the high"),
                                                 ("10G", "20G", "above the high"), ("", "80%", "without")])
def test_a_bad_watermark_stops_the_agent_at_start_naming_it(tmp_path, high, low, message):
    with pytest.raises(Exception, match=message):
        AgentSettings.from_env({"ELDRIC_WORKER_NAME": "w1", "ELDRIC_WORKER_TYPE": "inference",
                                "ELDRIC_DATA_DIR": str(tmp_path), "ELDRIC_DISK_HIGH_WATERMARK": high,
                                "ELDRIC_DISK_LOW_WATERMARK": low})


def test_bounds_in_bytes_used_and_low_defaults_to_high():
    assert Watermarks.parse("90%", "80%").bounds(1000) == (900, 800)
    assert Watermarks.parse("90%", "").bounds(1000) == (900, 900)
    assert Watermarks.parse("2K", "50%").bounds(1000) == (1000, 500)  # bytes past the disk: the disk's size
    assert Watermarks.parse("50%", "2K").bounds(4096) == (2048, 2048)  # low never above high


# --- the LRU choice -----------------------------------------------------------------------------

def model(name: str, size: int, last_used: float | None) -> dict:
    return {"name": name, "size": size, "last_used": last_used}


def test_least_recently_used_go_first_until_enough_is_freed():
    now = 1_000_000.0
    models = [model("new", 10, now - 60), model("old", 10, now - 3 * DAY), model("mid", 10, now - 2 * 3600),
              model("oldest", 10, now - 9 * DAY)]
    choice = eviction.choose(models, {}, 15, reason="disk 93% > high 90%", now=now)
    assert [m["name"] for m in choice.evict] == ["oldest", "old"]
    assert choice.evict[1]["why"] == "disk 93% > high 90%; least recently used (last used 3 days ago)"
    assert [m["name"] for m in choice.kept] == ["mid", "new"] and choice.short == 0


def test_a_protected_model_never_goes_even_when_that_leaves_the_disk_short():
    now = 1_000_000.0
    models = [model("pinned", 50, now - 9 * DAY), model("loaded", 50, now - 8 * DAY), model("free", 10, now - DAY)]
    choice = eviction.choose(models, {"pinned": "pinned to this worker", "loaded": "loaded in llamacpp"}, 60,
                             reason="r", now=now)
    assert [m["name"] for m in choice.evict] == ["free"]
    assert {m["name"]: m["why"] for m in choice.protected} == {"pinned": "pinned to this worker",
                                                                "loaded": "loaded in llamacpp"}
    assert choice.short == 50


def test_ties_go_by_name_so_the_plan_is_the_same_each_time():
    models = [model("b", 1, 5.0), model("a", 1, 5.0), model("c", 1, 5.0)]
    assert [m["name"] for m in eviction.choose(models, {}, 2, reason="r", now=10.0).evict] == ["a", "b"]


def test_nothing_to_free_evicts_nothing():
    assert eviction.choose([model("a", 1, 1.0)], {}, 0, reason="r").evict == []


# --- the protections ----------------------------------------------------------------------------

class FakeAgent:
    def __init__(self, tmp_path, **env) -> None:
        self.settings = AgentSettings.from_env({"ELDRIC_WORKER_NAME": "w1", "ELDRIC_WORKER_TYPE": "inference",
                                                "ELDRIC_DATA_DIR": str(tmp_path), **env})
        self.redis = fakeredis.FakeRedis(decode_responses=True)
        self.store = OllamaStore(tmp_path / "models")
        self.store.ensure()
        self.catalog = Catalog(tmp_path / "catalog")
        self.worker_id = "w1"


@pytest.fixture
def agent(tmp_path) -> FakeAgent:
    return FakeAgent(tmp_path)


def test_a_model_pinned_to_this_worker_is_protected(agent):
    pins.save_pin(agent.redis, pins.Pin(model="tiny:latest", workers=("w1", "w2")))
    pins.save_pin(agent.redis, pins.Pin(model="other:latest", workers=("w2",)))
    found = eviction.pin_protections(agent.redis, "w1", ["tiny:latest", "other:latest", "free:latest"])
    assert found == {"tiny:latest": "pinned to this worker"}


def test_without_needed_replicas_every_pinned_model_is_kept(agent, monkeypatch):
    monkeypatch.delattr(pins, "needed_replicas", raising=False)
    pins.save_pin(agent.redis, pins.Pin(model="tiny:latest", workers=None))
    pins.save_pin(agent.redis, pins.Pin(model="elsewhere:latest", workers=("w2",)))
    found = eviction.pin_protections(agent.redis, "w1", ["tiny:latest", "elsewhere:latest", "free:latest"])
    assert found == {"tiny:latest": "pinned (every copy of a pinned model is kept)",
                     "elsewhere:latest": "pinned (every copy of a pinned model is kept)"}


def test_a_replica_a_pin_needs_is_kept_and_an_extra_one_may_go(agent, monkeypatch):
    monkeypatch.setattr(pins, "needed_replicas", lambda client, wid: {"tiny:latest"}, raising=False)
    pins.save_pin(agent.redis, pins.Pin(model="tiny:latest", workers=None))
    pins.save_pin(agent.redis, pins.Pin(model="extra:latest", workers=None))
    found = eviction.pin_protections(agent.redis, "w1", ["tiny:latest", "extra:latest"])
    assert list(found) == ["tiny:latest"]


def test_a_loaded_model_is_protected_naming_its_backends():
    found = eviction.loaded_protections([{"name": "tiny:latest", "backend": "llamacpp"},
                                         {"name": "tiny:latest", "backend": "ollama"}])
    assert found == {"tiny:latest": "loaded in llamacpp, ollama"}


def test_a_model_a_running_job_is_on_is_protected_but_not_by_its_own_job(agent):
    models = [model("tiny:latest", 1, 1.0), model("src:latest", 1, 1.0), model("free:latest", 1, 1.0)]
    pull = create_job(agent.redis, kind="pull", model="tiny", targets=["w1"], source="ollama", deadline_seconds=60)
    create_job(agent.redis, kind="copy", model="dst:latest", targets=["w1"], source="ollama", deadline_seconds=60,
               options={"source": "src:latest"})
    create_job(agent.redis, kind="delete", model="free:latest", targets=["w1"], source="api", deadline_seconds=60)
    found = eviction.job_protections(agent, models)
    assert set(found) == {"tiny:latest", "src:latest"} and "running pull job" in found["tiny:latest"]
    assert set(eviction.job_protections(agent, models, except_job=pull)) == {"src:latest"}


def test_a_model_whose_weights_a_running_job_leased_is_protected_a_shared_small_blob_is_not(agent):
    agent.store.write_manifest(NAME, RAW)
    with agent.store.leases.hold("job-elsewhere", [Digest.of_bytes(TEMPLATE_BLOB)]):  # models pushed alike share it
        assert eviction.job_protections(agent, [model(NAME.short, 1, 1.0)]) == {}
    with agent.store.leases.hold("job-elsewhere", [Digest.of_bytes(MODEL_BLOB)]):
        found = eviction.job_protections(agent, [model(NAME.short, 1, 1.0)])
    assert found == {NAME.short: "a running job has its weights leased"}
    assert eviction.job_protections(agent, [model(NAME.short, 1, 1.0)]) == {}  # the lease is given back


# --- evicting -----------------------------------------------------------------------------------

class FakeDisk:
    """The store's filesystem as eviction measures it; a delete frees the model's size."""

    def __init__(self, total: int, used: int) -> None:
        self.total, self.used = total, used

    def of(self, _path) -> eviction.Disk:
        return eviction.Disk(self.total, self.used, self.total - self.used)


def evicting(agent, monkeypatch, models: list[dict], disk: FakeDisk, protected: dict | None = None) -> list:
    deleted = []
    monkeypatch.setattr(eviction.Disk, "of", staticmethod(disk.of))
    monkeypatch.setattr(eviction, "_models", lambda a, save=True: models)
    monkeypatch.setattr(eviction.loaded_models, "publish", lambda a: [
        {"name": n, "backend": "llamacpp"} for n, why in (protected or {}).items() if why == "loaded"])

    def delete(a, job_id, name):
        deleted.append((job_id, name))
        disk.used -= next(m["size"] for m in models if m["name"] == name)
        return {}
    return deleted, delete


def test_above_high_the_lru_unprotected_models_go_until_under_low_each_a_delete_job(tmp_path, monkeypatch):
    agent = FakeAgent(tmp_path, ELDRIC_DISK_HIGH_WATERMARK="90%", ELDRIC_DISK_LOW_WATERMARK="70%")
    now = time.time()
    models = [model("loaded:latest", 10, now - 9 * DAY), model("old:latest", 10, now - 3 * DAY),
              model("older:latest", 10, now - 5 * DAY), model("new:latest", 10, now - 60)]
    disk = FakeDisk(100, 95)
    deleted, delete = evicting(agent, monkeypatch, models, disk, {"loaded:latest": "loaded"})
    jobs = eviction.evict_over_high(agent, delete)
    assert [name for _, name in deleted] == ["older:latest", "old:latest", "new:latest"]  # 95 -> 65 <= 70
    meta = agent.redis.hgetall(keys.job(jobs[0]))
    assert meta["kind"] == "delete" and meta["model"] == "older:latest" and json.loads(meta["targets"]) == ["w1"]
    options = json.loads(meta["options"])
    assert options["reason"] == "evicted"
    assert options["why"] == "disk 95% > high 90% (to under low 70%); least recently used (last used 5 days ago)"
    assert agent.redis.hget(keys.EVICTIONS, "w1") == "3"


def test_under_high_or_without_watermarks_nothing_goes(tmp_path, monkeypatch):
    for env, used in (({"ELDRIC_DISK_HIGH_WATERMARK": "90%"}, 89), ({}, 99)):
        agent = FakeAgent(tmp_path, **env)
        deleted, delete = evicting(agent, monkeypatch, [model("a:latest", 10, 1.0)], FakeDisk(100, used))
        assert eviction.evict_over_high(agent, delete) == [] and deleted == []


def test_the_plan_says_what_would_go_and_why_and_changes_nothing(tmp_path, monkeypatch):
    agent = FakeAgent(tmp_path, ELDRIC_DISK_HIGH_WATERMARK="90%", ELDRIC_DISK_LOW_WATERMARK="80%")
    pins.save_pin(agent.redis, pins.Pin(model="pinned:latest", workers=("w1",)))
    models = [model("pinned:latest", 10, 1.0), model("loaded:latest", 10, 2.0), model("lru:latest", 10, 3.0),
              model("recent:latest", 10, time.time())]
    deleted, _ = evicting(agent, monkeypatch, models, FakeDisk(100, 95), {"loaded:latest": "loaded"})
    plan = eviction.plan(agent)
    assert plan["over_high"] and (plan["high_watermark"], plan["low_watermark"], plan["to_free"]) == (90, 80, 15)
    assert [m["name"] for m in plan["evict"]] == ["lru:latest", "recent:latest"]
    assert {m["name"]: m["why"] for m in plan["protected"]} == {"pinned:latest": "pinned to this worker",
                                                                "loaded:latest": "loaded in llamacpp"}
    assert deleted == [] and not agent.redis.exists(keys.JOBS)


def test_make_room_evicts_before_the_space_check_and_without_it_the_refusal_stays(tmp_path, monkeypatch):
    agent = FakeAgent(tmp_path)
    models = [model("a:latest", 30, 1.0), model("b:latest", 30, 2.0), model("c:latest", 30, 3.0)]
    disk = FakeDisk(100, 90)
    deleted, delete = evicting(agent, monkeypatch, models, disk)

    def ensure_space(directory, needed, what, reserve=0):
        if needed + reserve > disk.total - disk.used:
            raise InsufficientSpaceError(f"no space left for {what}: needs {needed}")
    monkeypatch.setattr(eviction, "ensure_space", ensure_space)
    plain = create_job(agent.redis, kind="pull", model="big", targets=["w1"], source="ollama", deadline_seconds=60)
    with pytest.raises(InsufficientSpaceError, match="no space left for big"):
        eviction.ensure_room(agent, plain, tmp_path, 40, "big", 5, delete=delete)
    assert deleted == []
    roomy = create_job(agent.redis, kind="pull", model="big", targets=["w1"], source="ollama", deadline_seconds=60,
                       options={"make_room": True})
    eviction.ensure_room(agent, roomy, tmp_path, 40, "big", 5, delete=delete)  # 10 free, 45 wanted: a and b go
    assert [name for _, name in deleted] == ["a:latest", "b:latest"]
    why = json.loads(agent.redis.hget(keys.job(deleted[0][0]), "options"))["why"]
    assert why.startswith("make room for big: needs 45 B free, has 10 B; least recently used")


def test_make_room_that_cannot_free_enough_says_what_may_not_go(tmp_path, monkeypatch):
    agent = FakeAgent(tmp_path)
    models = [model("a:latest", 30, 1.0), model("kept:latest", 60, 2.0)]
    disk = FakeDisk(100, 95)
    deleted, delete = evicting(agent, monkeypatch, models, disk, {"kept:latest": "loaded"})
    monkeypatch.setattr(eviction, "ensure_space", lambda d, needed, what, reserve=0: (_ for _ in ()).throw(
        InsufficientSpaceError("no space")) if needed + reserve > disk.total - disk.used else None)
    job = create_job(agent.redis, kind="pull", model="big", targets=["w1"], source="ollama", deadline_seconds=60,
                     options={"make_room": True})
    with pytest.raises(InsufficientSpaceError, match=r"make_room evicted 1 model\(s\).*kept:latest: loaded in llamacpp"):
        eviction.ensure_room(agent, job, tmp_path, 60, "big", 0, delete=delete)
    assert [name for _, name in deleted] == ["a:latest"]


def test_make_room_is_a_pull_option_kept_in_the_job():
    body = PullRequestSchema().load({"model": "tiny", "make_room": True})
    assert transfer_caps(body) == {"make_room": True}


# --- last use -----------------------------------------------------------------------------------

def test_last_use_is_the_latest_of_served_loaded_and_installed_and_survives_a_restart(tmp_path):
    lu = last_use.LastUse(tmp_path)
    models = [{"name": "served", "modified_at": 10.0}, {"name": "loaded", "modified_at": 10.0},
              {"name": "installed", "modified_at": 10.0}]
    out = lu.stamp(models, served_at={"served": 500.0}, loaded={"loaded"}, now=900.0)
    assert {m["name"]: m["last_used"] for m in out} == {"served": 500.0, "loaded": 900.0, "installed": 10.0}
    # a restarted agent (Redis empty, nothing loaded) keeps what it knew
    again = last_use.LastUse(tmp_path).stamp(models, served_at={}, loaded=set(), now=1000.0)
    assert {m["name"]: m["last_used"] for m in again} == {"served": 500.0, "loaded": 900.0, "installed": 10.0}
    assert json.loads((tmp_path / "last_used.json").read_text()) == {"installed": 10.0, "loaded": 900.0, "served": 500.0}


def test_a_read_only_stamp_writes_nothing(tmp_path):
    last_use.LastUse(tmp_path).stamp([{"name": "a", "modified_at": 1.0}], served_at={}, loaded=set(), save=False)
    assert not (tmp_path / "last_used.json").exists()


def test_the_inventory_gets_last_used_from_the_relays_record(agent):
    last_use.served(agent.redis, "w1", "tiny:latest", now=1234.0)
    out = last_use.stamp_inventory(agent, [{"name": "tiny:latest", "modified_at": 1.0}])
    assert out[0]["last_used"] == 1234.0


# --- the controller's eviction plan ------------------------------------------------------------

def test_the_controller_asks_only_a_known_online_worker_for_its_plan():
    from controller import create_app
    from eldric.cluster import workers as cluster_workers
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "", "CHECK_UPSTREAM": False})
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    app.extensions["eldric.redis"] = client
    http = app.test_client()
    missing = http.get("/api/v1/workers/nope/eviction-plan")
    assert missing.status_code == 404 and "nope" in missing.get_json()["message"]
    cluster_workers.register(client, {"id": "w1", "type": "inference", "address": "http://127.0.0.1:1"}, ttl=30)
    cluster_workers.go_offline(client, "w1")
    offline = http.get("/api/v1/workers/w1/eviction-plan")
    assert offline.status_code == 503 and "offline" in offline.get_json()["message"]
    cluster_workers.register(client, {"id": "w1", "type": "inference", "address": "http://127.0.0.1:1"}, ttl=30)
    unreachable = http.get("/api/v1/workers/w1/eviction-plan")  # nothing listens on port 1
    assert unreachable.status_code == 503 and "did not answer" in unreachable.get_json()["message"]
