"""Redis connections from one URL: `ELDRIC_REDIS_URL` names a Redis server or a Sentinel group.

Grammar (issue 13):

    redis://[[user]:password@]host[:port][/db]          one server (redis-py's own URL form)
    rediss://...                                         the same over TLS
    sentinel://[[user]:password@]host[:port][,host[:port]...][/db]?master=NAME

A Sentinel URL lists one or more sentinels (port 26379 by default) and must name the master
group (`master=`); the database defaults to 0. The user and password are the Redis master's
(the sentinels themselves are asked without a password). Every client made here finds the
current master through the sentinels and follows it after a failover.

`redis_client` is the one place a redis-py client is built from such a URL; `celery_broker`
and `redbeat_settings` translate it to what kombu and RedBeat each expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from pydantic import AfterValidator
from redis.sentinel import Sentinel

from eldric.core.errors import EldricError
from eldric.core.redaction import redact_urls

SENTINEL_PORT = 26379


class RedisURLError(EldricError, ValueError):
    """The Redis URL cannot be understood; the message says which part."""


@dataclass(frozen=True)
class SentinelURL:
    """A parsed `sentinel://` URL: where the sentinels are and which master group to follow."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        parts = urlsplit(url)
        if parts.scheme != "sentinel":
            raise RedisURLError(f"not a sentinel:// URL: {url!r}")
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        username, password = None, None
        if userinfo:
            user, _, pw = userinfo.partition(":")
            username, password = unquote(user) or None, unquote(pw) or None
        sentinels = tuple(_host_port(item, url) for item in hostlist.split(","))
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise RedisURLError(f"the database in {url!r} must be a number, not {path!r}")
        master = parse_qs(parts.query).get("master", [""])[0]
        if not master:
            raise RedisURLError(f"a sentinel URL names its master group: add ?master=NAME to {url!r}")
        return cls(sentinels=sentinels, master=master, db=int(path or 0), username=username, password=password)


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep:
        host, port = port, ""
    if not host:
        raise RedisURLError(f"a sentinel address is empty in {url!r}")
    if port and not port.isdigit():
        raise RedisURLError(f"the port of sentinel {item!r} in {url!r} must be a number")
    return host.strip("[]"), int(port or SENTINEL_PORT)


SCHEMES = ("redis", "rediss", "unix", "sentinel")


def checked_redis_url(url: str) -> str:
    """`url` when it is one this module can connect with (a settings validator); else ValueError saying why.

    The message never shows the URL's password.
    """
    try:
        scheme = urlsplit(url).scheme
        if scheme not in SCHEMES:
            raise RedisURLError(f"{url!r} is not a Redis URL: use redis://, rediss://, unix:// or sentinel://")
        if scheme == "sentinel":
            SentinelURL.parse(url)
    except (RedisURLError, ValueError) as exc:
        raise ValueError(redact_urls(str(exc))) from None
    return url


# A settings field holding ELDRIC_REDIS_URL: checked at start, so a bad URL stops the process with one line.
RedisURL = Annotated[str, AfterValidator(checked_redis_url)]


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme == "sentinel"


def redis_client(url: str, **kw: Any) -> redis.Redis:
    """A redis-py client for `url`; `kw` are redis-py client options (timeouts, decode_responses)."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kw)
    s = SentinelURL.parse(url)
    # The sentinels get the same timeouts: a dead sentinel must not hang the master lookup.
    sentinel_kwargs = {k: v for k, v in kw.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(list(s.sentinels), sentinel_kwargs=sentinel_kwargs, **kw)
    return sentinel.master_for(s.master, db=s.db, username=s.username, password=s.password)


def celery_broker(url: str) -> tuple[str, dict]:
    """The broker URL and transport options kombu needs for `url`.

    kombu's Sentinel transport takes one `sentinel://` URL per sentinel joined by `;`
    (kombu.transport.redis.SentinelChannel) and the group in `master_name`.
    """
    if not is_sentinel(url):
        return url, {}
    s = SentinelURL.parse(url)
    auth = ""
    if s.username or s.password:
        auth = f"{quote(s.username or '', safe='')}:{quote(s.password or '', safe='')}@"
    broker = ";".join(f"sentinel://{auth}{_netloc(host, port)}/{s.db}" for host, port in s.sentinels)
    return broker, {"master_name": s.master}


def redbeat_settings(url: str) -> dict:
    """Celery settings for RedBeat's own connection (`redbeat.schedulers.get_redis`)."""
    if not is_sentinel(url):
        return {"redbeat_redis_url": url, "redbeat_redis_options": {}}
    s = SentinelURL.parse(url)
    options: dict[str, Any] = {"sentinels": list(s.sentinels), "service_name": s.master, "db": s.db,
                               "socket_timeout": 10}
    if s.password:
        options["password"] = s.password
    if s.username:
        options["username"] = s.username
    # RedBeat takes its sentinel branch for URLs starting "redis-sentinel" when `sentinels` is set.
    return {"redbeat_redis_url": "redis-sentinel://", "redbeat_redis_options": options}


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
