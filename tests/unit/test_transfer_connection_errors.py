"""Connection failures no retry can mend fail at once, in one sentence naming the setting to change (issue 12).

Real loopback servers give the real exceptions: https spoken to a plain-http server is
OpenSSL's WRONG_VERSION_NUMBER; plain http to a TLS port is a TLS record read as a status
line, or Go's (docker-registry's) 400 "Client sent an HTTP request to an HTTPS server".
A name that does not exist is getaddrinfo's EAI_NONAME (faked: a machine without a name
server answers EAI_AGAIN, which stays transient).
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests
import urllib3

from eldric.core.names import ModelName
from eldric.transfer.errors import SourceError, SourceUnavailableError
from eldric.transfer.retry import (NAME_NOT_FOUND, NAME_SERVER_SILENT, PLAIN_HTTP_TO_TLS, TLS_TO_PLAIN_HTTP, Hints,
                                   connection_cause, connection_error, connection_problem, is_transient_error)
from eldric.transfer.upstreams import AddressPolicy
from eldric.transfer.registry_upstream import registry_hints
from worker_agent.sources import RegistrySource


class _Quiet(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _serve(server: socketserver.BaseServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain_http() -> Iterator[str]:
    yield from _serve(HTTPServer(("127.0.0.1", 0), _Quiet))


class _TlsAlert(socketserver.BaseRequestHandler):
    """What a TLS server does with a plain-http request: a TLS alert record, then the connection closes."""

    def handle(self) -> None:
        self.request.recv(4096)
        self.request.sendall(b"\x15\x03\x03\x00\x02\x02\x46")


class _GoTls(socketserver.BaseRequestHandler):
    """Go's net/http TLS server (docker-registry) answering plain http."""

    def handle(self) -> None:
        self.request.recv(4096)
        self.request.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")


@pytest.fixture
def tls_alert() -> Iterator[str]:
    yield from _serve(socketserver.TCPServer(("127.0.0.1", 0), _TlsAlert))


@pytest.fixture
def go_tls() -> Iterator[str]:
    yield from _serve(socketserver.TCPServer(("127.0.0.1", 0), _GoTls))


def _error(url: str) -> BaseException:
    with pytest.raises(requests.RequestException) as info:
        requests.get(url, timeout=5)
    return info.value


def _no_such_name(errno: int):
    def getaddrinfo(host, *args, **kwargs):
        raise socket.gaierror(errno, "Name or service not known")
    return getaddrinfo


def _source(name: ModelName, base: str) -> RegistrySource:
    return RegistrySource(base, policy=AddressPolicy.parse(("127.0.0.0/8",)), hints=registry_hints(name, base))


def test_https_to_a_plain_http_server_is_permanent_and_names_the_insecure_setting(plain_http: str) -> None:
    exc = _error(f"https://{plain_http}/v2/")
    assert connection_problem(exc) == TLS_TO_PLAIN_HTTP and not is_transient_error(exc)
    name = ModelName.parse(f"{plain_http}/library/m:1")
    started = time.monotonic()
    with pytest.raises(SourceError) as info:
        _source(name, f"https://{plain_http}").fetch_manifest(name)
    assert time.monotonic() - started < 2
    assert not isinstance(info.value, SourceUnavailableError)
    assert str(info.value) == f"{plain_http} speaks plain http, not https; add it to ELDRIC_INSECURE_REGISTRIES"


def test_a_mirror_set_to_https_on_plain_http_names_the_mirror_setting(plain_http: str) -> None:
    name = ModelName.parse("library/m:1")
    with pytest.raises(SourceError) as info:
        _source(name, f"https://{plain_http}").fetch_manifest(name)
    assert str(info.value) == (f"{plain_http} speaks plain http, not https; "
                               f"set ELDRIC_OLLAMA_REGISTRY to http://{plain_http}")


def test_plain_http_to_a_tls_port_is_permanent(tls_alert: str) -> None:
    exc = _error(f"http://{tls_alert}/v2/")
    assert connection_problem(exc) == PLAIN_HTTP_TO_TLS and not is_transient_error(exc)
    name = ModelName.parse(f"{tls_alert}/library/m:1")
    with pytest.raises(SourceError) as info:
        _source(name, f"http://{tls_alert}").fetch_manifest(name)
    assert str(info.value) == f"{tls_alert} speaks https, not plain http; remove it from ELDRIC_INSECURE_REGISTRIES"


def test_gos_plain_http_refusal_names_the_setting(go_tls: str) -> None:
    name = ModelName.parse(f"{go_tls}/library/m:1")
    with pytest.raises(SourceError) as info:
        _source(name, f"http://{go_tls}").fetch_manifest(name)
    assert str(info.value) == f"{go_tls} speaks https, not plain http; remove it from ELDRIC_INSECURE_REGISTRIES"


def test_a_name_that_does_not_exist_fails_at_once_with_the_mirror_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _no_such_name(socket.EAI_NONAME))
    name = ModelName.parse("library/m:1")
    with pytest.raises(SourceError) as info:
        _source(name, "https://registry.ollama.ai").fetch_manifest(name)
    assert not isinstance(info.value, SourceUnavailableError)
    assert str(info.value) == ("cannot resolve registry.ollama.ai: no DNS or no internet; "
                               "set ELDRIC_OLLAMA_REGISTRY to a reachable mirror")


def test_a_silent_name_server_is_retried_with_the_same_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _no_such_name(socket.EAI_AGAIN))
    exc = _error("https://registry.ollama.ai/v2/")
    assert connection_problem(exc) == NAME_SERVER_SILENT and is_transient_error(exc)
    err = connection_error(exc, "https://registry.ollama.ai/v2/", Hints(name_not_found="set X"))
    assert isinstance(err, SourceUnavailableError)
    assert str(err) == "cannot resolve registry.ollama.ai: the name server did not answer; set X"


def test_the_invalid_tld_does_not_resolve_here() -> None:
    """RFC 6761 reserves .invalid: with or without internet, the resolver says so (no name server: skipped)."""
    try:
        socket.getaddrinfo("nonexistent.invalid", 443)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this machine's resolver answers {exc}")
    exc = _error("https://nonexistent.invalid/v2/")
    assert connection_problem(exc) == NAME_NOT_FOUND and not is_transient_error(exc)


def test_a_refused_connection_stays_transient_in_plain_words() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    exc = _error(f"http://127.0.0.1:{port}/")
    assert connection_problem(exc) is None and is_transient_error(exc)
    err = connection_error(exc, f"http://127.0.0.1:{port}/v2/", what="registry")
    assert isinstance(err, SourceUnavailableError)
    assert str(err) == f"registry cannot reach 127.0.0.1:{port}: connection refused"


@pytest.mark.parametrize("url, host", [("https://user:pw@h.example:8443/x?sig=s3cr3t", "h.example:8443")])
def test_messages_carry_no_credentials_nor_query(monkeypatch: pytest.MonkeyPatch, url: str, host: str) -> None:
    err = connection_error(requests.ConnectionError(ConnectionRefusedError(111, "Connection refused")), url)
    assert str(err) == f"cannot reach {host}: connection refused"


def test_a_refused_connection_through_the_guarded_session_says_so() -> None:
    """The upstream session's own connect loop keeps the OS error as the cause."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = ModelName.parse(f"127.0.0.1:{port}/library/m:1")
    with pytest.raises(SourceUnavailableError) as info:
        _source(name, f"http://127.0.0.1:{port}").fetch_manifest(name)
    assert str(info.value) == f"cannot reach 127.0.0.1:{port}: connection refused"


@pytest.mark.parametrize("exc, words", [
    (urllib3.exceptions.ReadTimeoutError(None, "/v2/x", "Read timed out. (read timeout=5)"), "timed out"),
    (urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(10 bytes read, 90 more expected)",
                                      http.client.IncompleteRead(b"x" * 10, 90)), "the connection broke mid-answer"),
    (requests.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection without response"))),
     "the server closed the connection without an answer"),
    (SourceUnavailableError("registry x answered 503"), "registry x answered 503"),
])
def test_broken_connections_in_plain_words(exc: BaseException, words: str) -> None:
    assert connection_cause(exc) == words
