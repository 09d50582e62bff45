"""The agent's HTTP server process: gunicorn (gthread) serving the agent app on a socket the agent bound.

The agent's main thread belongs to the Celery consumer, and gunicorn's arbiter wants a
process of its own (signals, worker supervision), so the HTTP face runs as a child:
the agent binds and listens first (it knows its port, even a free one, and peers that
connect early wait in the backlog), then starts this process with the socket and its
settings on stdin. Blobs go out with sendfile(2) through gunicorn's file wrapper.
The child asks the kernel for SIGTERM when its parent dies, so a SIGKILLed agent
never leaves a server holding its port.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

THREADS = 16  # concurrent peer downloads and controller calls on one node
_PR_SET_PDEATHSIG = 1


class HttpProcess:
    """The running child, restarted if it ever exits while the agent runs; its port, and shutdown()."""

    def __init__(self, settings_json: str, sock: socket.socket) -> None:
        self.settings_json, self.sock = settings_json, sock
        self.server_port: int = sock.getsockname()[1]
        self._stopping = threading.Event()
        self.proc = self._spawn()
        threading.Thread(target=self._watch, name="agent-http-watch", daemon=True).start()

    def _spawn(self) -> subprocess.Popen:
        fd = self.sock.fileno()
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker_agent.http_process", str(fd)], stdin=subprocess.PIPE, pass_fds=(fd,),
            preexec_fn=_die_with_parent)  # noqa: PLW1509  (prctl only; takes no locks)
        assert proc.stdin is not None
        proc.stdin.write(self.settings_json.encode())
        proc.stdin.close()
        return proc

    def _watch(self) -> None:
        while not self._stopping.is_set():
            code = self.proc.wait()
            if self._stopping.wait(1.0):  # also paces restarts of a server that cannot start
                return
            if code == 0:  # gunicorn stopped on request (SIGTERM to the agent's process group): the agent is stopping
                log.info("the agent's HTTP server stopped")
                return
            log.error("the agent's HTTP server exited (code %s); restarting it", code)
            self.proc = self._spawn()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: an orphan is cleaned up by the next shutdown of the host's service manager


def start(settings_json: str, host: str, port: int) -> HttpProcess:
    """Bind host:port (0: a free port), then start the server process on that socket."""
    return HttpProcess(settings_json, listen(host, port))


def main(argv: list[str]) -> int:
    from eldric import logging_setup
    from eldric.cluster.redisconn import redis_client
    from eldric.web.gunicorn_server import serve_with_gunicorn
    from worker_agent.catalog import Catalog
    from worker_agent.ollama_store import OllamaStore
    from worker_agent.runtime import Agent
    from worker_agent.server import create_agent_app
    from worker_agent.settings import AgentSettings

    fd = int(argv[0])
    settings = AgentSettings.model_validate_json(sys.stdin.read())
    logging_setup.configure_logging(settings.log_level, logging_setup.format_from_env())
    logging_setup.set_process_fields(worker_id=settings.worker_id)

    def build():
        client = redis_client(settings.redis_url, decode_responses=True, socket_timeout=10,
                              socket_connect_timeout=5)
        agent = Agent(settings=settings, redis=client, store=OllamaStore(settings.models_dir),
                      catalog=Catalog(Path(settings.data_dir) / "catalog"))
        return create_agent_app(agent)

    serve_with_gunicorn(build, listen_fd=fd, threads=THREADS, name=f"eldric-agent-http {settings.worker_id}",
                        limits=settings.client_limits())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
