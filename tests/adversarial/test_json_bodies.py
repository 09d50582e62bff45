"""JSON bodies are bounded on every endpoint of the controller and the registry (issue 21, findings 8 and 9).

A real redis-server, `eldric registry` and `eldric controller` on loopback. Bodies are sent over raw
sockets, chunked (no Content-Length to check first) or with a Content-Length, as a hostile client would:

- over 1 MiB is 413 in the endpoint family's shape (Ollama's `{"error": ...}` on `/api/*`,
  `{"code", "status", "message"}` on `/api/v1`), and the controller reads at most that much: its peak
  RSS stays small while 64 MiB arrive chunked;
- nested deeper than 64 levels (the README's limit) is 400 naming the problem, never a 500 with a
  RecursionError; brackets inside strings are text and count nothing.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.processes import LOOPBACK, peak_rss_mib, reset_peak_rss, start_registry_and_controller

pytestmark = pytest.mark.integration

MIB = 1 << 20
MAX_DEPTH = 64  # README "API": JSON nested deeper than this is 400


class Services:
    def __init__(self, controller_port: int, registry_port: int, controller_pid: int) -> None:
        self.controller_port, self.registry_port, self.controller_pid = controller_port, registry_port, controller_pid


@pytest.fixture(scope="module")
def services(workdir: Path, redis_server) -> Iterator[Services]:
    env = {"ELDRIC_REDIS_URL": redis_server.url, "ELDRIC_URL_ALLOWLIST": LOOPBACK}
    registry, controller, rport, cport = start_registry_and_controller(workdir, env)
    yield Services(cport, rport, controller.proc.pid)
    controller.stop()
    registry.stop()


def post(port: int, path: str, chunks: Iterator[bytes], *, length: int | None = None,
         method: str = "POST") -> tuple[int, dict]:
    """Send `chunks` as the body (chunked unless `length`), reading the answer while still sending.

    The server may answer and close before the body ends (that is the point): the sender then stops,
    and the answer read meanwhile is what the client saw.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"{framing}\r\nConnection: close\r\n\r\n".encode())

    def send() -> None:
        try:
            for chunk in chunks:
                sock.sendall(chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if length is None:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # answered and closed before the body ended

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = resp.read()
    finally:
        sender.join(60)
        sock.close()
    return resp.status, json.loads(body)


def long_model_name(total: int) -> Iterator[bytes]:
    """`{"model": "aaaa…"}` of `total` bytes, in 1 MiB pieces: valid JSON of any size."""
    yield b'{"model": "'
    left = total - len(b'{"model": "') - 2
    while left > 0:
        yield b"a" * min(MIB, left)
        left -= MIB
    yield b'"}'


def nested(depth: int, inner: str = "") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


def test_64_mib_chunked_to_ollama_show_is_413_and_costs_the_controller_little_memory(services: Services) -> None:
    reset_peak_rss(services.controller_pid)
    before = peak_rss_mib(services.controller_pid)
    status, body = post(services.controller_port, "/api/show", long_model_name(64 * MIB))
    grown = peak_rss_mib(services.controller_pid) - before
    assert status == 413, body
    assert set(body) == {"error"} and "1048576 bytes" in body["error"], body  # Ollama's shape
    # Before the bound: +257 MiB and a 400. Now 1 MiB read, plus the discard buffer of werkzeug's server
    # (`eldric controller`), which drops the rest of a refused body 10 MB at a time: about 16-19 MiB
    # whatever the body's size (128 MiB: the same).
    assert grown < 32, f"the controller's peak RSS grew by {grown:.0f} MiB reading a refused body"


@pytest.mark.parametrize("path", ["/api/show", "/api/pull"])
def test_ollama_body_over_1_mib_with_a_content_length_is_413_in_ollama_shape(services: Services, path: str) -> None:
    size = 2 * MIB
    status, body = post(services.controller_port, path, long_model_name(size), length=size)
    assert status == 413, body
    assert set(body) == {"error"} and "1048576 bytes" in body["error"], body


@pytest.mark.parametrize(("service", "path"), [("controller", "/api/v1/models/pull"),
                                               ("controller", "/api/v1/models/show"),
                                               ("registry", "/api/v1/model-registry")])
def test_chunked_body_over_1_mib_on_api_v1_is_413(services: Services, service: str, path: str) -> None:
    port = services.controller_port if service == "controller" else services.registry_port
    status, body = post(port, path, long_model_name(2 * MIB))
    assert status == 413, body
    assert body["code"] == 413 and "Too Large" in body["status"] and "1048576 bytes" in body["message"], body


def test_a_body_of_exactly_1_mib_is_read_whole(services: Services) -> None:
    """The bound is inclusive: 1 MiB of valid JSON reaches the view (which refuses the name itself)."""
    status, body = post(services.controller_port, "/api/v1/models/pull", long_model_name(MIB))
    assert status in (400, 422), body
    assert "1048576" not in json.dumps(body) and "JSON" not in body["message"], body


@pytest.mark.parametrize(("service", "path", "shape"), [("controller", "/api/pull", "ollama"),
                                                        ("controller", "/api/show", "ollama"),
                                                        ("controller", "/api/v1/models/pull", "api"),
                                                        ("controller", "/api/v1/models/show", "api"),
                                                        ("registry", "/api/v1/model-registry", "api")])
def test_50000_deep_json_is_400_naming_the_nesting(services: Services, service: str, path: str, shape: str) -> None:
    port = services.controller_port if service == "controller" else services.registry_port
    doc = nested(50_000)  # 100 kB
    status, body = post(port, path, iter([doc]), length=len(doc))
    assert status == 400, body
    message = body["error"] if shape == "ollama" else body["message"]
    assert f"nested deeper than {MAX_DEPTH} levels" in message, body


def test_nesting_is_counted_inside_objects_too(services: Services) -> None:
    doc = b'{"model": "tiny", "insecure": ' + nested(MAX_DEPTH) + b"}"  # the object is one more level
    status, body = post(services.controller_port, "/api/pull", iter([doc]), length=len(doc))
    assert status == 400 and f"nested deeper than {MAX_DEPTH} levels" in body["error"], body


def test_nesting_up_to_the_limit_reaches_the_view(services: Services) -> None:
    doc = b'{"model": "tiny", "insecure": ' + nested(MAX_DEPTH - 1) + b"}"
    status, body = post(services.controller_port, "/api/v1/models/pull", iter([doc]), length=len(doc))
    assert status == 422 and "insecure" in json.dumps(body["errors"]), body  # the schema's answer, not the reader's


def test_brackets_inside_strings_are_not_nesting(services: Services) -> None:
    doc = json.dumps({"model": "[{" * 5000}).encode()
    status, body = post(services.controller_port, "/api/pull", iter([doc]), length=len(doc))
    assert status == 400 and "nested" not in body["error"] and "model" in body["error"], body
