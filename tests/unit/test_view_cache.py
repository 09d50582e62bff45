"""controller/view_cache.py: fleet views reused for at most a second, built once, forgotten on writes."""

from __future__ import annotations

import threading
import time

import fakeredis

from eldric.cluster import workers as cluster_workers
from controller import create_app
from controller.view_cache import ViewCache


def test_an_answer_is_reused_within_its_age_and_built_again_after():
    now = [0.0]
    cache = ViewCache(1.0, clock=lambda: now[0])
    builds = []

    def build():
        builds.append(now[0])
        return f"answer {len(builds)}".encode()
    assert cache.get(("workers",), build) == b"answer 1"
    now[0] = 0.9
    assert cache.get(("workers",), build) == b"answer 1"
    assert cache.get(("models", ()), build) == b"answer 2"  # each view and query its own answer
    now[0] = 1.0
    assert cache.get(("workers",), build) == b"answer 3"


def test_concurrent_requests_share_one_build():
    cache = ViewCache(1.0)
    builds = []

    def build():
        builds.append(1)
        time.sleep(0.1)
        return b"x"
    threads = [threading.Thread(target=cache.get, args=(("workers",), build)) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1


def test_off_at_zero():
    cache = ViewCache(0)
    builds = []
    for _ in range(3):
        cache.get(("workers",), lambda: builds.append(1) or b"x")
    assert len(builds) == 3


def test_a_write_through_the_controller_shows_at_once_an_agent_change_within_the_age():
    db = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "VIEW_CACHE_SECONDS": 0.5})
    app.extensions["eldric.redis"] = db
    client = app.test_client()
    cluster_workers.register(db, {"id": "gpu1", "type": "inference", "address": "http://x", "backends": ["ollama"]}, ttl=15)
    assert client.get("/api/v1/workers").get_json()["total"] == 1
    cluster_workers.register(db, {"id": "gpu2", "type": "inference", "address": "http://y", "backends": ["ollama"]}, ttl=15)
    assert client.get("/api/v1/workers").get_json()["total"] == 1  # an agent's change: within the age
    time.sleep(0.55)
    assert client.get("/api/v1/workers").get_json()["total"] == 2
    cluster_workers.go_offline(db, "gpu2")
    assert client.delete("/api/v1/workers/gpu2").status_code == 204
    assert [w["id"] for w in client.get("/api/v1/workers").get_json()["workers"]] == ["gpu1"]  # its own write: at once


def test_answers_of_queries_nobody_asks_again_do_not_pile_up():
    now = [0.0]
    cache = ViewCache(1.0, clock=lambda: now[0])
    for i in range(1000):
        now[0] += 0.01
        cache.get(("models", (("q", f"x{i}"),)), lambda: b"{}")
    assert len(cache._answers) <= 101 and not cache._building
