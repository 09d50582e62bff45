"""When to try again and how long to wait: the one rule every client, source and task uses.

Transient: a connection that failed, timed out or broke mid-body, and HTTP answers
408, 429 and 5xx. Everything else (4xx, digest mismatch, a name that does not
resolve to a model) fails at once: no retry can fix it. Some connection failures are
permanent too (issue 12): a host name DNS says does not exist (EAI_NONAME; a name
server that did not answer, EAI_AGAIN, stays transient), https spoken to a plain-http
server (SSL WRONG_VERSION_NUMBER) or plain http to a TLS server, and a certificate
that does not verify. `connection_problem` names them; `connection_error` turns any
connection failure into one short sentence (cause, then the caller's hint: the
setting to change) of the right kind: SourceError (permanent) or
SourceUnavailableError (retried).

Waits grow exponentially and carry "equal jitter" (half fixed, half random): when a
registry blinks, 200 workers retrying it do not all wake in the same instant, and
no wait is shorter than half its nominal value.
"""

from __future__ import annotations

import http.client
import random
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3

from eldric.core.redaction import host_of
from eldric.transfer.errors import SourceError, SourceUnavailableError, TransferError

# raw.read() surfaces urllib3's and the socket's own errors, not requests' wrappers.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
    http.client.HTTPException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)

TRANSIENT_STATUSES = frozenset({408, 429})


def is_transient_status(status: int) -> bool:
    """408, 429 and every 5xx are worth another try later."""
    return status in TRANSIENT_STATUSES or 500 <= status <= 599


# What connection_problem finds; the first three no retry can mend.
NAME_NOT_FOUND = "name not found"
TLS_TO_PLAIN_HTTP = "https to a plain-http server"
PLAIN_HTTP_TO_TLS = "plain http to an https server"
UNTRUSTED_CERTIFICATE = "untrusted certificate"
NAME_SERVER_SILENT = "name server did not answer"
PERMANENT_PROBLEMS = frozenset({NAME_NOT_FOUND, TLS_TO_PLAIN_HTTP, PLAIN_HTTP_TO_TLS, UNTRUSTED_CERTIFICATE})

# getaddrinfo's "this name does not exist" answers (EAI_NODATA: it exists without addresses; not on every libc).
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
# A TLS record's first bytes (handshake 0x16, alert 0x15, then version 3.x) read as an HTTP status line.
_TLS_RECORD_PREFIXES = ("\x15\x03", "\x16\x03")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it wraps: causes, contexts, urllib3's `reason`, exceptions among the args."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                    if isinstance(x, BaseException))


def connection_problem(exc: BaseException) -> str | None:
    """Which of the named connection problems `exc` is (one of the constants above), None for any other."""
    for e in _chain(exc):
        if isinstance(e, socket.gaierror):
            return NAME_NOT_FOUND if e.errno in _NO_SUCH_NAME else NAME_SERVER_SILENT
        if isinstance(e, ssl.SSLCertVerificationError):
            return UNTRUSTED_CERTIFICATE
        if isinstance(e, ssl.SSLError) and (e.reason == "WRONG_VERSION_NUMBER" or "WRONG_VERSION_NUMBER" in str(e)):
            return TLS_TO_PLAIN_HTTP
        if isinstance(e, http.client.BadStatusLine) and str(e.line if hasattr(e, "line") else e).startswith(
                _TLS_RECORD_PREFIXES):
            return PLAIN_HTTP_TO_TLS
    return None


def is_transient_error(exc: BaseException) -> bool:
    """A connection failure worth another try: one of TRANSIENT_ERRORS and none of PERMANENT_PROBLEMS."""
    return isinstance(exc, TRANSIENT_ERRORS) and connection_problem(exc) not in PERMANENT_PROBLEMS


@dataclass(frozen=True)
class Hints:
    """What the user can change, per problem, appended to the error after a semicolon ('' for none)."""

    name_not_found: str = "check the host name"
    tls_to_plain_http: str = ""
    plain_http_to_tls: str = ""
    certificate: str = ""


NO_HINTS = Hints()


def connection_error(exc: BaseException, url: str, hints: Hints = NO_HINTS, what: str = "") -> TransferError:
    """One sentence for a failed connection to `url`: the cause, then the hint; permanent ones are SourceError.

    `what` (e.g. "registry") prefixes the sentence. Never the HTTP library's own text, which
    names internal classes and is long enough to be cut mid-word.
    """
    netloc = host_of(url)  # never the URL's userinfo or query (a mirror's secret, a signature)
    try:
        host = urlsplit(f"//{netloc}").hostname or netloc
    except ValueError:  # an unclosed IPv6 bracket
        host = netloc
    problem = connection_problem(exc)
    prefix = f"{what} " if what else ""
    if problem == NAME_NOT_FOUND:
        return SourceError(_sentence(f"{prefix}cannot resolve {host}: no DNS or no internet", hints.name_not_found))
    if problem == NAME_SERVER_SILENT:
        return SourceUnavailableError(_sentence(f"{prefix}cannot resolve {host}: the name server did not answer",
                                                hints.name_not_found))
    if problem == TLS_TO_PLAIN_HTTP:
        return SourceError(_sentence(f"{prefix}{netloc} speaks plain http, not https", hints.tls_to_plain_http))
    if problem == PLAIN_HTTP_TO_TLS:
        return SourceError(_sentence(f"{prefix}{netloc} speaks https, not plain http", hints.plain_http_to_tls))
    if problem == UNTRUSTED_CERTIFICATE:
        cert = next((e for e in _chain(exc) if isinstance(e, ssl.SSLCertVerificationError)), None)
        detail = getattr(cert, "verify_message", "") or "verification failed"
        return SourceError(_sentence(f"{prefix}{netloc}: its TLS certificate is not trusted ({detail})",
                                     hints.certificate))
    return SourceUnavailableError(f"{prefix}cannot reach {netloc}: {connection_cause(exc)}")


def _sentence(cause: str, hint: str) -> str:
    return f"{cause}; {hint}" if hint else cause


def connection_cause(exc: BaseException) -> str:
    """Short words for a failed or broken connection ("connection refused", "timed out"); ours pass unchanged."""
    if isinstance(exc, TransferError):
        return str(exc)
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno and e.strerror:
            return e.strerror[:1].lower() + e.strerror[1:]
    for e in _chain(exc):  # urllib3's NewConnectionError is a ConnectTimeoutError too, for history's sake
        if isinstance(e, (TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError)) and not isinstance(
                e, urllib3.exceptions.NewConnectionError):
            return "timed out"
    for e in _chain(exc):
        if isinstance(e, http.client.RemoteDisconnected):
            return "the server closed the connection without an answer"
    for e in _chain(exc):
        if isinstance(e, (http.client.IncompleteRead, urllib3.exceptions.ProtocolError,
                          requests.exceptions.ChunkedEncodingError)):
            return "the connection broke mid-answer"
    return "the connection failed"


# What TLS servers answer to plain http with (Go's net/http, as docker-registry; nginx).
_PLAIN_HTTP_REFUSALS = ("client sent an http request to an https server", "plain http request was sent to https port")


def is_plain_http_refusal(status: int, text: str) -> bool:
    """A 400 whose text says plain http reached an https port."""
    return status == 400 and any(t in text.lower() for t in _PLAIN_HTTP_REFUSALS)


def backoff_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first): base·2^attempt capped, with equal jitter."""
    nominal = min(cap, base * (2 ** max(0, attempt)))
    return nominal / 2 + rand() * nominal / 2
