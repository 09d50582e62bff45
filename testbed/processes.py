"""Real processes for integration tests and benches: redis-server, eldric services; ports, waits, logs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TypeVar
from collections.abc import Callable

import requests

T = TypeVar("T")

# ELDRIC_URL_ALLOWLIST for services under test: every test server listens on loopback, which url
# sources, URL imports and registry redirects refuse unless the allow-list names it.
LOOPBACK = "127.0.0.0/8,::1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.1,
               message: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}" + (f" (last error: {last_exc})" if last_exc else ""))


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # loopback only
    return s


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM again from the current RSS, so a measurement sees only what comes after."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Service:
    """A subprocess with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name, self.argv, self.env, self.cwd = name, argv, env, cwd
        self.log_path = Path(log_dir) / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ELDRIC_", "REGISTRY_"))}
        full_env.update(self.env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=self.cwd, start_new_session=True)
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (Celery threads and all): a crash, not a shutdown."""
        if self.proc and self.running:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.proc or not self.running:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class RedisServer(Service):
    """A private redis-server on a free port, no persistence (restartable by fault tests)."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__(f"redis-{self.port}", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                                "--save", "", "--appendonly", "no", "--dir", str(log_dir)], log_dir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        super().start()
        import redis
        client = redis.Redis(port=self.port)
        wait_until(client.ping, timeout=10, message="redis-server to answer PING")
        return self


def eldric(*args: str) -> list[str]:
    """argv running the `eldric` CLI with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "eldric.cli", *args]


REPO_ROOT = Path(__file__).resolve().parents[1]


def start_registry(root: Path, name: str, *args: str, port: int | None = None,
                   env: dict[str, str] | None = None) -> tuple[Service, str]:
    """`eldric registry` with storage `root/name` and no free-space floor (`args` may set another), answering.

    Returns (service, base URL); the caller stops it.
    """
    port = port or free_port()
    svc = Service(name, eldric("registry", "--port", str(port), "--storage", str(root / name), "--min-free", "0",
                               *args), root, env=env, cwd=REPO_ROOT).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: session().get(f"{url}/healthz", timeout=2).ok, timeout=20,
               message=f"registry {name}\n{svc.log_tail()}")
    return svc, url


def start_registry_and_controller(workdir: Path, env: dict[str, str], *, storage: str = "reg", prefix: str = "",
                                  timeout: float = 30.0) -> tuple[Service, Service, int, int]:
    """A registry (storage under workdir, no free-space floor) and a controller pointed at it, both answering.

    Returns (registry, controller, registry port, controller port); the caller stops them.
    """
    rport, cport = free_port(), free_port()
    env = {**env, "ELDRIC_REGISTRY_URL": f"http://127.0.0.1:{rport}"}
    registry = Service(f"{prefix}registry", eldric("registry", "--port", str(rport), "--storage", str(workdir / storage),
                                                   "--min-free", "0"), workdir, env=env, cwd=REPO_ROOT).start()
    controller = Service(f"{prefix}controller", eldric("controller", "--port", str(cport)), workdir, env=env,
                         cwd=REPO_ROOT).start()
    http = session()
    for svc, port in ((registry, rport), (controller, cport)):
        wait_until(lambda port=port: http.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok, timeout=timeout,
                   message=f"{svc.name}\n{svc.log_tail()}")
    return registry, controller, rport, cport
