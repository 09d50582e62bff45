"""The cluster model view (issue 13): same answer as the old algorithm, paging, filters, the cache."""

from __future__ import annotations

import json
import random

import fakeredis
import pytest

from eldric.cluster import workers as cluster_workers
from controller import create_app, models as inventory
from controller.models import InventoryCache, ModelQuery
from eldric.cluster import keys
from eldric.cluster.queues import is_model_serving

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


def reference_cluster_models(client, forget_after=None):
    """The view as it was before issue 13 (quadratic, no cache): the answer the new one must keep."""
    from controller import workers as cluster
    workers = cluster.list_workers(client, forget_after=forget_after)
    serving = [w for w in workers if is_model_serving(w["type"] or "")]
    inventories = {}
    for w in serving:
        raw = client.hgetall(keys.worker_models(w["id"]))
        inventories[w["id"]] = {name: json.loads(value) for name, value in raw.items()}
    models: dict[str, dict] = {}
    for wid in sorted(inventories):
        for name, record in inventories[wid].items():
            entry = models.setdefault(name, {
                "name": name, "size": record.get("size", 0), "digest": record.get("digest"),
                "format": record.get("format"), "details": record.get("details") or {},
                "modified_at": record.get("modified_at"), "workers": [], "stored_not_served": [], "digests": {},
            })
            # issue 22: coverage counts a worker only where a backend serves the model (no `backends`: an old agent)
            served = record.get("backends", ["ollama"])
            entry["workers" if served else "stored_not_served"].append(wid)
            entry["digests"].setdefault(record.get("digest"), []).append(wid)
            entry["modified_at"] = max(entry["modified_at"] or 0, record.get("modified_at") or 0)
    total = len(serving)
    out = []
    for name in sorted(models):
        entry = models[name]
        entry["coverage"] = round(100.0 * len(entry["workers"]) / total, 1) if total else 0.0
        entry["missing"] = [w["id"] for w in serving if w["id"] not in entry["workers"]]
        entry["consistent"] = len(entry["digests"]) == 1
        entry["status"] = "served" if entry["workers"] else "stored, not served"
        out.append(entry)
    return out, total


def record(name: str, digest: str = "a", modified_at: float = 1.0) -> dict:
    return {"name": name, "full_name": f"registry.ollama.ai/library/{name}", "digest": f"sha256:{digest * 64}",
            "size": 100 + len(name), "modified_at": modified_at, "format": "gguf", "backend": "ollama",
            "details": {"family": "llama"}}


def add_worker(client, wid: str, wtype: str = "inference", models: list[dict] | None = None) -> None:
    cluster_workers.register(client, {"id": wid, "type": wtype, "address": f"http://{wid}:8890",
                                 "backends": ["ollama"]}, ttl=60)
    if models is not None:
        cluster_workers.publish_inventory(client, wid, models)


def seed_cluster(client, workers: int = 30, models: int = 12, seed: int = 7) -> None:
    """Inference workers with random subsets, a digest disagreement, a data worker, an empty worker."""
    rng = random.Random(seed)
    for i in range(workers):
        wtype = "data" if i % 10 == 9 else ("cloud" if i % 7 == 3 else "inference")
        have = [record(f"m{m:02d}:latest", digest="b" if (m == 3 and i % 4 == 0) else "a", modified_at=float(i))
                for m in range(models) if rng.random() < 0.8]
        add_worker(client, f"w{i:03d}", wtype, have if is_model_serving(wtype) else None)
    add_worker(client, "zz-empty", "inference", [])
    cluster_workers.go_offline(client, "w005")  # offline workers still count, as before


@pytest.fixture
def redis_db():
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def test_same_answer_as_the_old_algorithm_with_and_without_the_cache(redis_db):
    seed_cluster(redis_db)
    expected = reference_cluster_models(redis_db)
    cache = InventoryCache()
    assert inventory.cluster_models(redis_db) == expected
    assert inventory.cluster_models(redis_db, cache=cache) == expected  # fills the cache
    assert inventory.cluster_models(redis_db, cache=cache) == expected  # served from it
    assert any(not m["consistent"] for m in expected[0]) and any(m["missing"] for m in expected[0])


def test_a_model_no_backend_serves_is_listed_apart_and_not_counted(redis_db):
    served = {**record("m:latest"), "backends": ["llamacpp"]}
    stored = {**record("m:latest"), "backends": [], "backend": "stored, not served"}
    add_worker(redis_db, "gpu1", models=[served])
    add_worker(redis_db, "gpu2", models=[stored, {**record("only:latest"), "backends": []}])
    add_worker(redis_db, "gpu3", models=[])
    models = {m["name"]: m for m in inventory.cluster_models(redis_db, cache=InventoryCache())[0]}
    assert models["m:latest"]["workers"] == ["gpu1"] and models["m:latest"]["stored_not_served"] == ["gpu2"]
    assert models["m:latest"]["coverage"] == 33.3 and models["m:latest"]["missing"] == ["gpu2", "gpu3"]
    assert models["m:latest"]["status"] == "served" and models["only:latest"]["status"] == "stored, not served"
    assert models["only:latest"]["coverage"] == 0.0 and models["only:latest"]["workers"] == []
    assert list(models.values()) == reference_cluster_models(redis_db)[0]


def test_the_cache_follows_inventory_changes_and_removed_workers(redis_db):
    seed_cluster(redis_db)
    cache = InventoryCache()
    inventory.cluster_models(redis_db, cache=cache)
    cluster_workers.publish_inventory(redis_db, "w001", [record("new:latest")])
    redis_db.delete(keys.worker("w002"))  # a worker whose record vanished leaves the view
    models, _ = inventory.cluster_models(redis_db, cache=cache)
    assert models == reference_cluster_models(redis_db)[0]
    assert next(m for m in models if m["name"] == "new:latest")["workers"] == ["w001"]
    assert all("w002" not in m["workers"] for m in models)


def test_an_inventory_written_without_a_stamp_is_never_served_from_the_cache(redis_db):
    add_worker(redis_db, "gpu1", models=[record("a:latest")])
    cache = InventoryCache()
    inventory.cluster_models(redis_db, cache=cache)
    # Same model count, different content, no new inventory_at: not publish_inventory's doing.
    redis_db.hdel(keys.worker("gpu1"), "inventory_at")
    redis_db.delete(keys.worker_models("gpu1"))
    redis_db.hset(keys.worker_models("gpu1"), "b:latest", json.dumps(record("b:latest")))
    assert [m["name"] for m in inventory.cluster_models(redis_db, cache=cache)[0]] == ["b:latest"]


def test_paging_cuts_the_sorted_list_and_total_counts_every_match(redis_db):
    seed_cluster(redis_db)
    everything, eligible = reference_cluster_models(redis_db)
    page, matching, eligible_now = inventory.query_models(redis_db, ModelQuery(limit=5, offset=3))
    assert [m["name"] for m in page] == [m["name"] for m in everything[3:8]]
    assert page == everything[3:8]
    assert (matching, eligible_now) == (len(everything), eligible)
    assert inventory.query_models(redis_db, ModelQuery(limit=5, offset=10_000))[:2] == ([], len(everything))


@pytest.mark.parametrize("query", [ModelQuery(q="M0"), ModelQuery(q="m1"), ModelQuery(coverage_below=80),
                                   ModelQuery(q="m0", coverage_below=100, limit=2), ModelQuery(q="absent")])
def test_filters_match_the_old_list_filtered_by_hand(redis_db, query):
    seed_cluster(redis_db)
    everything, _ = reference_cluster_models(redis_db)
    wanted = [m for m in everything if (not query.q or query.q.lower() in m["name"].lower())
              and (query.coverage_below is None or m["coverage"] < query.coverage_below)]
    page, matching, _ = inventory.query_models(redis_db, query)
    assert page == wanted[:query.limit]
    assert matching == len(wanted)


@pytest.fixture(scope="module")
def shared_app():
    return create_app({"REDIS_URL": CLOSED_PORT_URL, "API_TOKEN": "", "CHECK_UPSTREAM": False})


@pytest.fixture
def api(shared_app, redis_db):
    shared_app.extensions["eldric.redis"] = redis_db
    return shared_app.test_client()


def test_the_api_without_parameters_answers_as_before(api, redis_db):
    seed_cluster(redis_db)
    expected, eligible = reference_cluster_models(redis_db)
    for _ in range(2):  # the second answer comes from the process's inventory cache
        body = api.get("/api/v1/models").get_json()
        assert body == json.loads(json.dumps({"models": expected, "total": len(expected),
                                              "eligible_workers": eligible}))


def test_the_api_pages_and_filters(api, redis_db):
    seed_cluster(redis_db)
    expected, _ = reference_cluster_models(redis_db)
    partial = [m for m in expected if m["coverage"] < 100]
    body = api.get("/api/v1/models?coverage_below=100&limit=2&offset=1").get_json()
    assert [m["name"] for m in body["models"]] == [m["name"] for m in partial[1:3]]
    assert body["total"] == len(partial)
    body = api.get("/api/v1/models?q=M03").get_json()
    assert [m["name"] for m in body["models"]] == ["m03:latest"] and body["total"] == 1
    assert body["models"][0]["missing"] == next(m for m in expected if m["name"] == "m03:latest")["missing"]


def test_the_api_answers_a_new_redis_database_not_the_old_cache(shared_app):
    """The cache belongs to one Redis client: swapping the client (another database) starts it anew."""
    for name in ("first:latest", "second:latest"):
        db = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
        add_worker(db, "gpu1", models=[record(name)])
        db.hset(keys.worker("gpu1"), "inventory_at", "1.0")  # the same stamp in both databases
        shared_app.extensions["eldric.redis"] = db
        assert [m["name"] for m in shared_app.test_client().get("/api/v1/models").get_json()["models"]] == [name]


@pytest.mark.parametrize("query, field", [("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"),
                                          ("offset=2147483648", "offset"), ("coverage_below=100.5", "coverage_below"),
                                          ("coverage_below=nan", "coverage_below"), ("q=", "q"),
                                          ("q=" + "x" * 600, "q"), ("limit=two", "limit")])
def test_the_api_bounds_its_parameters(api, query, field):
    resp = api.get(f"/api/v1/models?{query}")
    assert resp.status_code == 422
    assert field in resp.get_json()["errors"]["query"]


def test_workers_reporting_different_facts_for_one_model_keep_the_old_precedence(redis_db):
    """The first worker by id gives size, format and details; a later one's differing facts do not leak."""
    for wid, family in (("b2", "qwen"), ("a1", "llama"), ("c3", "qwen")):
        add_worker(redis_db, wid, models=[{**record("m:latest"), "details": {"family": family}}])
    cache = InventoryCache()
    for _ in range(2):
        models, _ = inventory.cluster_models(redis_db, cache=cache)
        assert models == reference_cluster_models(redis_db)[0]
        assert models[0]["details"] == {"family": "llama"}


def test_the_shared_values_are_pruned_when_inventories_churn(redis_db):
    add_worker(redis_db, "gpu1", models=[record(f"old{i}:latest") for i in range(800)])
    cache = InventoryCache()
    inventory.cluster_models(redis_db, cache=cache)
    for round_ in range(3):
        cluster_workers.publish_inventory(redis_db, "gpu1", [record(f"new{round_}-{i}:latest") for i in range(800)])
        models, _ = inventory.cluster_models(redis_db, cache=cache)
        assert models == reference_cluster_models(redis_db)[0]
    assert "old1:latest" not in cache.shared
    assert len(cache.shared) < 5 * 800


def expected_page(client, query: ModelQuery) -> tuple[list[dict], int, int]:
    """The reference answer (full rebuild, quadratic) filtered and paged by hand."""
    everything, eligible = reference_cluster_models(client)
    wanted = [m for m in everything if (not query.q or query.q.lower() in m["name"].lower())
              and (query.coverage_below is None or m["coverage"] < query.coverage_below)]
    end = None if query.limit is None else query.offset + query.limit
    return wanted[query.offset:end], len(wanted), eligible


def held(client, wid: str) -> list[dict]:
    return [json.loads(v) for v in client.hgetall(keys.worker_models(wid)).values()]


def change_one_worker(client, rng: random.Random, step: int) -> None:
    """One of the changes a fleet makes: pulls end, models go, digests and facts move, workers come and go."""
    ids = sorted(client.smembers(keys.WORKERS))
    wid = rng.choice(ids)
    models = held(client, wid)
    kind = rng.choice(["add", "add", "drop", "digest", "newer", "facts", "rewrite_same", "vanish", "join",
                       "retype", "unstamped"])
    if kind == "add":
        models.append(record(f"m{rng.randrange(14):02d}:latest", modified_at=float(step)))
    elif kind == "drop" and models:
        models.pop(rng.randrange(len(models)))
    elif kind == "digest" and models:
        models[0] = {**models[0], "digest": f"sha256:{rng.choice('abc') * 64}"}
    elif kind == "newer" and models:
        models[-1] = {**models[-1], "modified_at": 1000.0 + step}
    elif kind == "facts" and models:
        models[0] = {**models[0], "details": {"family": rng.choice(["llama", "qwen"])}, "size": rng.randrange(5)}
    elif kind == "vanish":
        client.delete(keys.worker(wid))
        return
    elif kind == "join":
        add_worker(client, f"n{step:03d}", rng.choice(["inference", "cloud", "data"]),
                   [record(f"m{m:02d}:latest") for m in range(14) if rng.random() < 0.5])
        return
    elif kind == "retype":
        client.hset(keys.worker(wid), "type", rng.choice(["inference", "data"]))
        return
    elif kind == "unstamped":  # written behind publish_inventory's back: same count, no new stamp
        client.hdel(keys.worker(wid), "inventory_at")
        if models:
            client.hdel(keys.worker_models(wid), models[0]["name"])
            client.hset(keys.worker_models(wid), "hand:latest", json.dumps(record("hand:latest")))
        return
    cluster_workers.publish_inventory(client, wid, models)  # "rewrite_same" rewrites it unchanged


def test_the_incremental_aggregate_answers_as_a_full_rebuild_after_every_change(redis_db):
    """The cache keeps the per-model aggregate and updates only the models of workers whose inventory
    changed: after each of many random changes its answer is the quadratic reference's, on every page."""
    seed_cluster(redis_db, workers=24, models=10)
    rng = random.Random(13)
    cache = InventoryCache()
    queries = [ModelQuery(), ModelQuery(coverage_below=100, limit=3, offset=1), ModelQuery(q="m0", limit=4)]
    for step in range(120):
        change_one_worker(redis_db, rng, step)
        for query in queries:
            assert inventory.query_models(redis_db, query, cache=cache) == expected_page(redis_db, query), step


def test_answers_are_fresh_dicts_the_view_may_extend(redis_db):
    """The view adds mirror_update to its entries: that must not leak into the cache's next answer."""
    seed_cluster(redis_db, workers=5, models=3)
    cache = InventoryCache()
    first, _ = inventory.cluster_models(redis_db, cache=cache)
    first[0]["mirror_update"] = {"digest": "x"}
    first[0]["coverage"] = -1
    again, _ = inventory.cluster_models(redis_db, cache=cache)
    assert again == reference_cluster_models(redis_db)[0]
    assert "mirror_update" not in again[0]


def test_missing_lists_follow_the_serving_workers(redis_db):
    """A kept missing list is recomputed when a worker joins, leaves or stops serving models."""
    add_worker(redis_db, "a", models=[record("x:latest")])
    add_worker(redis_db, "b", models=[])
    cache = InventoryCache()
    assert inventory.cluster_models(redis_db, cache=cache)[0][0]["missing"] == ["b"]
    add_worker(redis_db, "c", models=[])
    assert inventory.cluster_models(redis_db, cache=cache)[0][0]["missing"] == ["b", "c"]
    redis_db.hset(keys.worker("b"), "type", "data")
    models, eligible = inventory.cluster_models(redis_db, cache=cache)
    assert (models[0]["missing"], models[0]["coverage"], eligible) == (["c"], 50.0, 2)
