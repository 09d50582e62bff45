"""The agents' Celery app; configured by the entry point, tasks registered in worker_agent.tasks.

The Redis transport is kombu's own with one change (issue 11): a channel keeps the
connection parameters it was opened with. kombu builds a channel's Redis client lazily
from `channel.connection.client`, and closing a broken connection clears that reference
(`kombu.connection.Connection._do_close_transport` sets `transport.client = None`;
`virtual.Transport.close_channel` sets `channel.connection = None`). Celery 5.7's
`Consumer.on_connection_error_after_connected` (celery/worker/consumer/consumer.py, the
new `connection.close()` after `connection.collect()`) closes the channel a second time
after the first close was cut short by the dead socket (`Channel.close` ->
`_brpop_read` raises before `super().close()`), so with a task still running under
`acks_late` the close goes on to `QoS.restore_unacked_once` -> `Channel.conn_or_acquire`
-> `Channel._connparams` (kombu/transport/redis.py) and dies on
`AttributeError: 'NoneType' object has no attribute 'hostname'`. That is not a
connection error, so `kombu.common.ignore_errors` lets it through and the worker stops
("Unrecoverable error"). The same lookup kills the worker later when the task finishes
and acknowledges its message on the old channel (`'NoneType' object has no attribute
'client'`). With the parameters kept, both calls reach Redis like any other: a restore
while Redis is down is a connection error Celery ignores (the message stays in Redis's
unacked set if Redis kept its data), and the late ack removes it after the reconnect.
Upstream reports of the same family: kombu #582, #970; celery #7705, #9250.

kombu's Sentinel channel (`sentinel://` brokers, issue 13) is a subclass of the same Channel and
has the same hole plus one more: its `_sentinel_managed_pool` reads the sentinel addresses from
`self.connection.client.alt`. `SentinelChannel` keeps those too.
"""

from __future__ import annotations

import threading
import warnings
from types import SimpleNamespace
from urllib.parse import urlsplit

from celery import Celery
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import worker_shutting_down
from kombu.transport import redis as kombu_redis

from eldric.cluster.celeryconf import celery_config

app = Celery("eldric", include=["worker_agent.tasks"])


class KeptConnparams:
    """Mixin for kombu's Redis channels: the connection parameters are those it was opened with."""

    def _connparams(self, asynchronous: bool = False) -> dict:
        # Called first by Channel.__init__ (its PING), while the transport is still attached.
        saved = self.__dict__.setdefault("_eldric_connparams", {})
        if asynchronous not in saved:
            saved[asynchronous] = super()._connparams(asynchronous=asynchronous)
        return dict(saved[asynchronous])


class RedisChannel(KeptConnparams, kombu_redis.Channel):
    """kombu's Redis channel, able to open a client after its connection was closed."""


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel


class SentinelChannel(KeptConnparams, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, able to find the master again after its connection was closed."""

    def _sentinel_managed_pool(self, asynchronous: bool = False):
        attached = self.connection
        if attached is not None and attached.client is not None:
            if "_eldric_connection" not in self.__dict__:  # first call: Channel.__init__ (its PING)
                self._eldric_connection = SimpleNamespace(client=SimpleNamespace(alt=list(attached.client.alt)),
                                                          default_port=attached.default_port)
            return super()._sentinel_managed_pool(asynchronous)
        # Detached (transport.client or channel.connection cleared): what kombu reads, as it was.
        self.connection = self._eldric_connection
        try:
            return super()._sentinel_managed_pool(asynchronous)
        finally:
            self.connection = attached


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORT = f"{__name__}:RedisTransport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"


def configure(redis_url: str, visibility_timeout: int = 3600) -> Celery:
    app.conf.update(celery_config(redis_url, visibility_timeout))
    scheme = urlsplit(redis_url).scheme
    if scheme in ("redis", "sentinel"):
        # Not rediss://: kombu derives TLS defaults from the `rediss` scheme name.
        app.conf.broker_transport = TRANSPORT if scheme == "redis" else SENTINEL_TRANSPORT
    # An agent waits for Redis as long as it takes (Celery's default gives up after 100 tries,
    # about 50 minutes, and the worker then exits).
    app.conf.broker_connection_max_retries = None
    # A running pull goes on through a broker outage (its bytes do not pass through Redis); the
    # copy of its message Redis may hand out again is skipped by the job's lock. Pinned because
    # Celery 6 turns cancelling on; the warning saying so would otherwise come with every outage.
    app.conf.worker_cancel_long_running_tasks_on_connection_loss = False
    return app


def quiet_cancel_warning() -> None:
    """Drop Celery's warning about that setting, logged with every outage. Call it after the worker's
    logging setup (app.Worker()), which turns every Celery deprecation warning to 'always'."""
    warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
                            category=CPendingDeprecationWarning)


def stop_downloads_on_shutdown(stop: threading.Event) -> None:
    """Set `stop` when the worker starts to shut down (SIGTERM, SIGINT, SIGQUIT).

    Celery's warm shutdown waits for the running tasks to finish, and a pull may have hours to go
    (issue 22: 31 s and more of downloading after SIGTERM, then systemd's SIGKILL). The downloads
    watch `stop` (eldric.transfer.download.DownloadOptions.stop): they end at their next read with
    their partial data kept, the tasks return, and the restarted agent resumes its jobs.
    Runs in the signal handler: it only sets the event (no logging, no locks of ours).
    """
    def shutting_down(**_kw) -> None:
        stop.set()
    worker_shutting_down.connect(shutting_down, weak=False)
