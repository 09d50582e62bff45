"""One Redis pub/sub connection per controller process, fanned out to any number of job streams.

Every job write is published on the job's channel (`eldric:job:<id>:events`). Before this
hub each server-sent-event stream held its own pub/sub connection, taken from the app's
Redis pool (redis-py: at most 100), so past about 100 open streams new ones failed and
open ones died mid-response (issue 13). Now one background thread owns one pub/sub
connection; it SUBSCRIBEs to a job's channel while at least one stream follows the job
(reference counts) and UNSUBSCRIBEs when the last one leaves, so the controller receives
only the jobs someone watches.

Each followed job has one `JobFeed` (controller/job_feed.py) shared by its streams: the hub
puts every record into it and seals its batches (each `progress` event built once, at a rate
bounded per job); each stream holds a `Subscription` on the feed.

pub/sub is not thread-safe in redis-py, so only the hub thread touches the connection:
streams queue (un)subscribe requests, and a subscription is `ready` once Redis confirmed it
(a stream reads its snapshot only after that, so no write falls in between). When Redis drops
the connection every subscription is marked `broken` (its stream ends with a clean `end`
event and the client reconnects); the thread reconnects with backoff and resubscribes what
is still followed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis

from controller.job_feed import JobFeed
from eldric.cluster.jobs.store import published
from eldric.cluster import keys
from eldric.core.errors import EldricError

log = logging.getLogger(__name__)


class Subscription:
    """One stream's hold on a job's feed: `ready` once Redis confirmed the channel; `close()` lets go."""

    def __init__(self, hub: EventHub, job_id: str, feed: JobFeed) -> None:
        self.hub, self.job_id, self.feed = hub, job_id, feed
        self.ready = threading.Event()
        self.subscribed_at = 0.0  # monotonic time it became ready: a snapshot must be read after it
        self.first_seq = 0  # the feed's last batch then: later ones may hold records the snapshot lacks
        self._closed = False

    @property
    def broken(self) -> bool:
        return self.feed.broken

    def mark_broken(self) -> None:
        self.feed.mark_broken()
        self.ready.set()  # a stream waiting to start gives up at once

    def close(self) -> None:
        """Stop following the job (idempotent)."""
        if not self._closed:
            self._closed = True
            self.hub.release(self)


class HubUnavailableError(EldricError):
    """The hub could not subscribe in time (Redis unreachable)."""


class EventHub:
    """The process's single pub/sub reader; `subscribe(job_id)` per stream, `Subscription.close()` after."""

    def __init__(self, connect: Callable[[], redis.client.PubSub], *, poll: float = 0.05,
                 backoff: Callable[[int], float] = lambda n: min(5.0, 0.2 * 2 ** n)) -> None:
        self._connect, self._poll, self._backoff = connect, poll, backoff
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = {}  # channel -> its streams
        self._feeds: dict[str, JobFeed] = {}  # channel -> the feed its streams share
        self._requests: list[tuple[str, str]] = []  # ("subscribe" | "unsubscribe", channel), for the thread
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._confirmed: set[str] = set()  # channels Redis confirmed
        self._inflight: dict[str, int] = {}  # channel -> SUBSCRIBEs sent, not yet confirmed
        self.connected = False

    def subscribe(self, job_id: str, timeout: float = 5.0) -> Subscription:
        """Follow a job; returns once Redis confirmed the subscription, or raises HubUnavailableError."""
        channel = keys.job_events(job_id)
        with self._lock:
            feed = self._feeds.get(channel)
            if feed is None or feed.broken:
                feed = self._feeds[channel] = JobFeed(job_id)
            sub = Subscription(self, job_id, feed)
            subs = self._subs.setdefault(channel, set())
            subs.add(sub)
            if len(subs) == 1:
                self._requests.append(("subscribe", channel))
            elif self.connected and self._is_confirmed(channel):
                sub.ready.set()
            self._ensure_thread()
        if not sub.ready.wait(timeout) or sub.broken:
            sub.close()
            raise HubUnavailableError(f"could not subscribe to {channel} within {timeout} s")
        sub.subscribed_at, sub.first_seq = time.monotonic(), sub.feed.seq
        return sub

    def release(self, sub: Subscription) -> None:
        channel = keys.job_events(sub.job_id)
        with self._lock:
            subs = self._subs.get(channel)
            if subs is None:
                return
            subs.discard(sub)
            if not subs:
                del self._subs[channel]
                self._feeds.pop(channel, None)
                self._confirmed.discard(channel)
                self._requests.append(("unsubscribe", channel))

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def followed(self) -> int:
        """How many jobs have at least one stream (for tests and metrics)."""
        with self._lock:
            return len(self._subs)

    # --- the thread -------------------------------------------------------------------------

    def _is_confirmed(self, channel: str) -> bool:
        return channel in self._confirmed

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="eldric-event-hub", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            pubsub = None
            try:
                pubsub = self._connect()
                with self._lock:  # (re)subscribe everything followed now; later changes come as requests
                    self._requests = [("subscribe", ch) for ch in self._subs]
                    self.connected = True
                failures = 0
                self._serve(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.warning("event hub lost Redis (%s); ending the streams of %d jobs, reconnecting", exc, self.followed,
                            exc_info=log.isEnabledFor(logging.DEBUG))
                failures += 1
            finally:
                self._drop_all()
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except (redis.RedisError, OSError):
                        pass
            self._stopped.wait(self._backoff(failures))

    def _serve(self, pubsub: redis.client.PubSub) -> None:
        while not self._stopped.is_set():
            with self._lock:
                requests, self._requests = self._requests, []
            for action, channel in requests:
                getattr(pubsub, action)(channel)
                if action == "subscribe":
                    with self._lock:
                        self._inflight[channel] = self._inflight.get(channel, 0) + 1
            # Drain for one poll at most, so requests and the feeds' sealing get their turn however fast
            # messages come.
            until = time.monotonic() + self._poll
            message = next_message(pubsub, self._poll)
            while message is not None:
                self._dispatch(message)
                if time.monotonic() >= until:
                    break
                message = next_message(pubsub, 0.0)
            with self._lock:
                feeds = list(self._feeds.values())
            for feed in feeds:
                feed.seal_due()

    def _dispatch(self, message: dict) -> None:
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if message.get("type") == "subscribe":
            with self._lock:
                # Only the confirmation of the latest SUBSCRIBE counts (an older one may precede an UNSUBSCRIBE).
                left = self._inflight[channel] = self._inflight.get(channel, 1) - 1
                if left > 0:
                    return
                del self._inflight[channel]
                subs = list(self._subs.get(channel, ()))
                if subs:
                    self._confirmed.add(channel)
            for sub in subs:
                sub.ready.set()
            return
        if message.get("type") != "message":
            return
        record = parse_record(message.get("data"))
        if record is None:
            return
        with self._lock:
            feed = self._feeds.get(channel)
        if feed is not None:
            feed.put(record)

    def _drop_all(self) -> None:
        """Redis went away: every stream ends cleanly (its client reconnects) and is forgotten."""
        with self._lock:
            self.connected = False
            self._confirmed = set()
            self._inflight = {}
            subs = [s for group in self._subs.values() for s in group]
            self._subs.clear()
            self._feeds.clear()
            self._requests = []
        for sub in subs:
            sub._closed = True  # nothing left to release
            sub.mark_broken()


def next_message(pubsub: redis.client.PubSub, wait: float) -> dict | None:
    """The next message, waiting up to `wait` seconds for one to start.

    redis-py's get_message(timeout) also gives the rest of a message that is only partly in just
    `timeout` seconds, then raises TimeoutError and drops the connection. At thousands of messages a
    second on a busy Redis that happened within seconds (issue 13's fleet bench), ending every
    stream. Here a message that started is read to its end under the connection's socket timeout.
    """
    conn = pubsub.connection
    if conn is None or not pubsub.subscribed:
        return pubsub.get_message(timeout=wait)
    if not conn.can_read(timeout=wait):
        return None
    response = conn.read_response(disconnect_on_error=False, push_request=True)
    return pubsub.handle_message(response) if response else None


def parse_record(data: object) -> dict | None:
    """A published worker record with its job's state and finality (the job store's `published`), or None for anything else."""
    try:
        record = json.loads(data or "")
    except (TypeError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("worker"), str)):
        return None
    return published(record)

