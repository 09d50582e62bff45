"""The HTTP sessions every service and client of ours starts from, and bounded reads of what upstreams send.

Every byte from outside the cluster is bounded (issue 11): a body is read with
`read_capped` (streamed, at most N bytes, the connection closed on the rest; `read_small_body`
refuses a larger one), an error answer becomes at most a few hundred characters (`error_text`,
`raise_for_registry_status`), an upstream session
follows at most MAX_REDIRECTS redirects without reading their bodies, and each of its
connections is checked against an AddressPolicy after DNS resolution (every redirect
hop too). Header lines are bounded by http.client itself (64 KiB each, 100 of them).
"""

from __future__ import annotations

import json
import re
import socket
import sys
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family, create_connection

from eldric.transfer.errors import SourceError, SourceUnavailableError
from eldric.transfer.retry import TRANSIENT_ERRORS, connection_cause, is_transient_status
from eldric.transfer.upstreams import AddressPolicy

BLOCK = 1 << 20
CONNECT_TIMEOUT = 10.0  # seconds to open a connection, for every client of ours
MAX_REDIRECTS = 10
ERROR_BODY_BYTES = 64 << 10  # of an error answer, only this much is ever read
ERROR_MESSAGE_CHARS = 300  # of an upstream's own words, only this much goes into one of our errors

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class _BigBlocks(HTTPAdapter):
    """Send request bodies in 1 MiB blocks (urllib3's default is 16 KiB: 64x the system calls)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["blocksize"] = BLOCK
        super().init_poolmanager(*args, **kwargs)


def bearer(token: str | None) -> dict[str, str]:
    """The `Authorization: Bearer` header of `token` (the project's one scheme), none for no token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def http_session(trust_env: bool = False, *, token: str = "") -> requests.Session:
    """The one way a session is made: big send blocks, `token` sent as a bearer on every request.

    `trust_env=False`: cluster-internal traffic takes no egress proxy (nor .netrc credentials).
    requests drops the Authorization header on a redirect to another host.
    """
    session = requests.Session()
    session.trust_env = trust_env
    session.headers.update(bearer(token))
    for prefix in ("http://", "https://"):
        session.mount(prefix, _BigBlocks())
    return session


def upstream_session(policy: AddressPolicy, *, trust_env: bool = True) -> requests.Session:
    """A session for hosts outside the cluster (registries, URLs); `trust_env`: an egress proxy may apply."""
    return guard(http_session(trust_env), policy)


def pace_receive(session: requests.Session, rate: float) -> requests.Session:
    """Keep a rate-capped download's bursts small: each new connection's receive buffer holds ~20 ms of `rate`.

    A cap (eldric.transfer.ratelimit) is applied as the body is read; without this, TCP fills a
    receive buffer that Linux grows up to net.ipv4.tcp_rmem's maximum (32 MiB seen here) at the
    link's full speed, and the link carries that burst over the cap.
    """
    size = max(16 << 10, int(rate * 0.02))
    options = [*HTTPConnection.default_socket_options, (socket.SOL_SOCKET, socket.SO_RCVBUF, size)]
    for adapter in {id(a): a for a in session.adapters.values()}.values():
        adapter.poolmanager.connection_pool_kw["socket_options"] = options
    return session


def guard(session: requests.Session, policy: AddressPolicy, *, trust_env: bool | None = None) -> requests.Session:
    """Make `session` an upstream one: connections checked against `policy`, redirects bounded and not read."""
    if trust_env is not None:
        session.trust_env = trust_env
    session.max_redirects = MAX_REDIRECTS
    if _drop_redirect_body not in session.hooks["response"]:
        session.hooks["response"].append(_drop_redirect_body)
    for prefix in ("http://", "https://"):
        session.mount(prefix, _GuardedAdapter(policy))
    return session


def _drop_redirect_body(resp: requests.Response, *args, **kwargs) -> requests.Response:
    """requests reads a redirect's whole body to reuse its connection; we close the connection instead."""
    if resp.is_redirect:
        resp._content = b""
    return resp


def _guarded(base: type[HTTPConnection], policy: AddressPolicy) -> type[HTTPConnection]:
    class GuardedConnection(base):  # type: ignore[valid-type, misc]
        """Connects only to addresses `policy` allows, resolved once, here (no second lookup to rebind)."""

        def _new_conn(self) -> socket.socket:
            try:
                infos = policy.resolve(self._dns_host, self.port, allowed_gai_family())
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc
            error: OSError | None = None
            for *_family, sockaddr in infos:
                try:
                    sock = create_connection((sockaddr[0], self.port), self.timeout,
                                             source_address=self.source_address, socket_options=self.socket_options)
                except TimeoutError as exc:
                    raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                                    f"(connect timeout={self.timeout})") from exc
                except OSError as exc:
                    error = exc
                    continue
                sys.audit("http.client.connect", self, self.host, self.port)
                return sock
            raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error
    return GuardedConnection


class _GuardedAdapter(_BigBlocks):
    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": _guarded(HTTPConnection, self.policy)}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": _guarded(HTTPSConnection, self.policy)}),
        }

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        if select_proxy(request.url, kwargs.get("proxies") or {}):
            # The proxy opens the connection; check what this node can resolve of the target.
            parts = urlsplit(request.url)
            try:
                self.policy.resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            except socket.gaierror:
                pass  # only the proxy knows this name
        return super().send(request, **kwargs)


def read_capped(resp: requests.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether it held more; the response is closed, the rest never read.

    Only a response fetched with `stream=True` is bounded: without it requests has read the whole body already.
    """
    body = bytearray()
    try:
        for chunk in resp.iter_content(chunk_size=max(1, min(limit + 1, 64 << 10))):
            body += chunk
            if len(body) > limit:
                break
    finally:
        resp.close()
    return bytes(body[:limit]), len(body) > limit


def raise_if_transient(resp: requests.Response, what: str) -> None:
    """Transient answers (eldric.transfer.retry) are worth retrying later: SourceUnavailableError."""
    if is_transient_status(resp.status_code):
        resp.close()
        raise SourceUnavailableError(f"{what} answered {resp.status_code}")


def raise_for_registry_status(resp: requests.Response, what: str) -> None:
    """A registry's error answer as one sentence: SourceUnavailableError when transient, else SourceError."""
    raise_if_transient(resp, f"{what}: registry")
    if resp.status_code >= 400:
        raise SourceError(f"{what}: registry answered {resp.status_code}: {error_text(resp)}")


def read_small_body(resp: requests.Response, limit: int, what: str) -> bytes:
    """The whole body if it is at most `limit` bytes, read as it streams; SourceError for a bigger one."""
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        resp.close()
        raise SourceError(f"{what} is larger than {limit >> 10} KiB ({int(length)} bytes announced)")
    try:
        body, more = read_capped(resp, limit)
    except TRANSIENT_ERRORS as exc:
        raise SourceUnavailableError(f"{what}: {connection_cause(exc)}") from None
    if more:
        raise SourceError(f"{what} is larger than {limit >> 10} KiB")
    return body


def error_text(resp: requests.Response, limit: int = ERROR_MESSAGE_CHARS) -> str:
    """What an error answer says: at most `limit` characters (then `… [cut]`) from at most ERROR_BODY_BYTES.

    A registry's `{"errors": [{"code", "message"}]}`, a `{"error"}` or `{"message"}` object, else the
    text; the reason phrase when the body says nothing. Control characters become spaces.
    """
    try:
        body, more = read_capped(resp, ERROR_BODY_BYTES)
    except (requests.RequestException, *TRANSIENT_ERRORS):
        body, more = b"", False
    text = "" if more else _json_message(body)
    if not text:
        text = body.decode("utf-8", errors="replace")
    text = " ".join(_CONTROL.sub(" ", text).split()) or " ".join(str(resp.reason or "").split())
    if more or len(text) > limit:
        return text[:limit] + "… [cut]"
    return text or f"HTTP {resp.status_code}"


def _json_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(doc, dict):
        return ""
    errors = doc.get("errors")
    if isinstance(errors, list):
        return "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip()
                         for e in errors if isinstance(e, dict))
    for key in ("error", "message", "detail"):
        if isinstance(doc.get(key), str):
            return doc[key]
    return ""
