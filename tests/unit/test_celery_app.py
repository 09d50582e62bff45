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

from worker_agent.celery_app import TRANSPORT, RedisChannel, configure

URL = "redis://127.0.0.1:6399/3"


class DetachableTransport:
    """What a channel reads from its transport: the connection info and the default port."""

    default_port = kombu_redis.DEFAULT_PORT

    def __init__(self, url: str) -> None:
        self.client = Connection(url)


def opened_then_detached(channel_class: type) -> kombu_redis.Channel:
    """A channel that built its pool while attached, then went through kombu's close of a dead connection."""
    channel = channel_class.__new__(channel_class)
    channel.connection = DetachableTransport(URL)
    channel.Client = channel._get_client()
    channel._create_client()  # Channel.__init__ does this (its PING); no socket is opened here
    channel._pool = channel._async_pool = None  # Channel.close -> _disconnect_pools
    channel.connection.client = None  # Connection._do_close_transport
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
