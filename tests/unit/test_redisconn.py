"""eldric.cluster.redisconn: one ELDRIC_REDIS_URL, redis:// or sentinel://, for redis-py, kombu and RedBeat."""

from __future__ import annotations

import pytest
from kombu import Connection

from eldric.cluster.celeryconf import celery_config
from eldric.cluster.redisconn import RedisURLError, SentinelURL, celery_broker, redbeat_settings, redis_client
from eldric.cluster.schedules import ScheduleSettings, beat_config


def test_a_sentinel_url_lists_sentinels_db_master_and_password():
    s = SentinelURL.parse("sentinel://:s%40cret@h1:26380,h2,[::1]:26381/3?master=eldric")
    assert s.sentinels == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert (s.master, s.db, s.username, s.password) == ("eldric", 3, None, "s@cret")


def test_the_database_defaults_to_zero():
    assert SentinelURL.parse("sentinel://h1?master=m").db == 0


@pytest.mark.parametrize("url, words", [
    ("sentinel://h1:26379/0", "?master=NAME"),
    ("sentinel://h1:x/0?master=m", "must be a number"),
    ("sentinel://h1,,h2/0?master=m", "empty"),
    ("sentinel://h1/zero?master=m", "database"),
    ("redis://h1/0", "not a sentinel"),
])
def test_a_bad_sentinel_url_says_what_is_wrong(url, words):
    with pytest.raises(RedisURLError, match=words.replace("?", r"\?")):
        SentinelURL.parse(url)


def test_redis_urls_go_to_kombu_and_redbeat_unchanged():
    assert celery_broker("redis://h:1/2") == ("redis://h:1/2", {})
    assert redbeat_settings("rediss://h:1/2") == {"redbeat_redis_url": "rediss://h:1/2", "redbeat_redis_options": {}}


def test_kombu_gets_one_sentinel_url_per_sentinel_and_the_master_name():
    broker, options = celery_broker("sentinel://:pw@h1:26380,h2/4?master=eldric")
    assert broker == "sentinel://:pw@h1:26380/4;sentinel://:pw@h2:26379/4"
    assert options == {"master_name": "eldric"}
    conn = Connection(broker, transport_options=options)
    assert (conn.transport_cls, conn.hostname, conn.port, conn.password, conn.virtual_host) == (
        "sentinel", "h1", 26380, "pw", "4")
    assert conn.alt == ["sentinel://:pw@h1:26380/4", "sentinel://:pw@h2:26379/4"]


def test_celery_config_keeps_the_visibility_timeout_beside_the_master_name():
    conf = celery_config("sentinel://h1,h2/0?master=eldric", visibility_timeout=60)
    assert conf["broker_url"].count(";") == 1
    assert conf["broker_transport_options"] == {"visibility_timeout": 60, "master_name": "eldric"}


def test_beat_gives_redbeat_the_sentinels():
    conf = beat_config("sentinel://:pw@h1,h2:26380/2?master=eldric", ScheduleSettings())
    assert conf["redbeat_redis_url"].startswith("redis-sentinel")
    assert conf["redbeat_redis_options"] == {"sentinels": [("h1", 26379), ("h2", 26380)], "service_name": "eldric",
                                             "db": 2, "socket_timeout": 10, "password": "pw"}


def test_a_sentinel_client_follows_the_named_master_with_the_given_options():
    client = redis_client("sentinel://:pw@h1,h2:26380/5?master=eldric", decode_responses=True, socket_timeout=3)
    pool = client.connection_pool
    assert pool.service_name == "eldric"
    assert [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
            for c in pool.sentinel_manager.sentinels] == [("h1", 26379), ("h2", 26380)]
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["decode_responses"], kwargs["socket_timeout"]) == (5, "pw", True, 3)


def test_a_redis_client_is_redis_pys_own():
    kwargs = redis_client("redis://:pw@h:7/1", socket_timeout=3).connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("h", 7, 1, "pw")


def test_the_registry_reports_import_progress_through_the_sentinels(tmp_path):
    from registry.server import RegistrySettings, create_registry_app

    app = create_registry_app(tmp_path, RegistrySettings(redis_url="sentinel://h1,h2/0?master=eldric"), background=False)
    pool = app.extensions["eldric.importer"].redis.connection_pool
    assert pool.service_name == "eldric" and len(pool.sentinel_manager.sentinels) == 2


def test_the_controller_reads_and_enqueues_through_the_sentinels():
    from controller import create_app

    app = create_app({"REDIS_URL": "sentinel://h1,h2/0?master=eldric", "TESTING": True})
    assert app.extensions["eldric.redis"].connection_pool.service_name == "eldric"
    conf = app.extensions["eldric.celery"].conf
    assert conf.broker_url == "sentinel://h1:26379/0;sentinel://h2:26379/0"
    assert conf.broker_transport_options["master_name"] == "eldric"
