"""worker_agent.celery_app: the Redis channel can still open a client after its connection was closed.

The crash of issue 11 in miniature: kombu closes a broken connection by detaching the
transport (`transport.client = None`, `channel.connection = None`) and then, with a task
still unacknowledged, asks the channel for a Redis client to restore (or later to ack)
the message. kombu's own channel looks its parameters up on the detached connection.
"""

from __future__ import annotations

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from worker_agent.celery_app import SENTINEL_TRANSPORT, TRANSPORT, RedisChannel, SentinelChannel, configure

URL = "redis://127.0.0.1:6399/3"


class DetachableTransport:
    """What a channel reads from its transport: the connection info and the default port."""

    def __init__(self, url: str, default_port: int = kombu_redis.DEFAULT_PORT) -> None:
        self.client = Connection(url)
        self.default_port = default_port


def opened_then_detached(channel_class: type, url: str = URL, *, keep_connection: bool = False) -> kombu_redis.Channel:
    """A channel that built its pool while attached, then went through kombu's close of a dead connection."""
    channel = channel_class.__new__(channel_class)
    if issubclass(channel_class, kombu_redis.SentinelChannel):
        channel.connection = DetachableTransport(url, kombu_redis.SentinelTransport.default_port)
        channel.master_name = "eldric"  # from the transport options, set by Channel.__init__
    else:
        channel.connection = DetachableTransport(url)
    channel.Client = channel._get_client()
    channel._create_client()  # Channel.__init__ does this (its PING); no socket is opened here
    channel._pool = channel._async_pool = None  # Channel.close -> _disconnect_pools
    channel.connection.client = None  # Connection._do_close_transport
    if not keep_connection:
        channel.connection = None  # virtual.Transport.close_channel
    return channel


def test_kombus_own_channel_cannot_open_a_client_once_detached():
    channel = opened_then_detached(kombu_redis.Channel)
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute"):
        channel._create_client()


def test_our_channel_opens_a_client_to_the_same_redis_once_detached():
    client = opened_then_detached(RedisChannel)._create_client()
    params = client.connection_pool.connection_kwargs
    assert (params["host"], params["port"], params["db"]) == ("127.0.0.1", 6399, 3)


def test_the_agent_uses_the_transport_for_redis_urls_and_retries_forever():
    app = configure(URL)
    assert app.conf.broker_transport == TRANSPORT
    assert app.conf.broker_connection_max_retries is None
    assert app.conf.task_acks_late is True
    assert Connection(URL, transport=TRANSPORT).transport.Channel is RedisChannel


SENTINEL_BROKER = "sentinel://h1:26380/3;sentinel://h2:26381/3"


def test_kombus_sentinel_channel_cannot_find_the_master_once_detached():
    channel = opened_then_detached(kombu_redis.SentinelChannel, SENTINEL_BROKER)
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute"):
        channel._create_client()


@pytest.mark.parametrize("keep_connection", [False, True], ids=["channel-closed", "transport-detached"])
def test_our_sentinel_channel_asks_the_same_sentinels_once_detached(keep_connection):
    channel = opened_then_detached(SentinelChannel, SENTINEL_BROKER, keep_connection=keep_connection)
    attached = channel.connection
    pool = channel._create_client().connection_pool
    assert channel.connection is attached
    assert pool.service_name == "eldric"
    assert pool.connection_kwargs["db"] == 3
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in pool.sentinel_manager.sentinels] == [("h1", 26380), ("h2", 26381)]


def test_the_agent_uses_the_sentinel_transport_for_sentinel_urls():
    app = configure("sentinel://h1,h2/0?master=eldric")
    assert app.conf.broker_transport == SENTINEL_TRANSPORT
    assert app.conf.broker_transport_options["master_name"] == "eldric"
    assert Connection(app.conf.broker_url, transport=SENTINEL_TRANSPORT).transport.Channel is SentinelChannel
