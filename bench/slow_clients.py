"""Benchmark: slow clients against the data node's HTTP server, per gunicorn worker class (issue 21, finding 4).

For each worker class the registry (`eldric registry`'s app, 32 threads, a cluster secret) is started
and measured from 127.0.0.1, the attacker's address too:
1. idle: `/healthz` latency;
2. slowloris: N unauthenticated connections sending one header line every 5 s (the issue's attack),
   then 10 samples, 0.5 s apart, of `/healthz` and of an authenticated list, each with a 5 s timeout;
3. a busy pool: 40 authenticated slow readers of a file (64 KiB every 0.5 s each), then `/healthz`;
4. throughput: `curl` download of a SIZE file (sendfile; best of 3) and `curl` upload of it (best of 2).

    python bench/slow_clients.py [--workers guarded gthread gevent] [--attackers 48 200] [--size 512M]

`gthread` is gunicorn's worker as it ran before (`gthread-256`: with 256 threads); `gevent` needs gevent importable (`--gevent-path DIR`
adds DIR to the server's PYTHONPATH, e.g. after `pip install --target DIR gevent`); `guarded` is ours.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eldric.core.settings import parse_size
from eldric.transfer.model_registry import API_PREFIX
from testbed.processes import Service, free_port, session, wait_until
from testbed.slow_clients import Slowloris, timed_get

SECRET = "bench-secret"
AUTH = {"Authorization": f"Bearer {SECRET}"}
REPO = Path(__file__).resolve().parents[1]


def serve(worker: str, port: int, storage: str, threads: int) -> None:
    """The server process: the registry under `worker` (gthread and gevent replace our worker class)."""
    import eldric.web.gunicorn_server as gs
    from registry.server import RegistrySettings
    from registry.server import serve as serve_registry
    if worker != "guarded":
        gs.guarded_worker = lambda limits: worker.split("-")[0]
    serve_registry("127.0.0.1", port, storage, RegistrySettings(token=SECRET, min_free_bytes=0, mirror_upstream="none"),
                   threads=threads)


def start(worker: str, root: Path, threads: int, gevent_path: str | None) -> tuple[Service, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (gevent_path, str(REPO)) if p)}
    svc = Service(f"registry-{worker}", [sys.executable, __file__, "--serve", worker, str(port), str(root / worker), str(threads)],
                  root, env=env, cwd=REPO).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: session().get(f"{url}/healthz", timeout=2).ok, timeout=30, message=f"{worker}\n{svc.log_tail()}")
    return svc, url


def samples(url: str, n: int = 10, every: float = 0.5, **kw) -> str:
    got = []
    for _ in range(n):
        status, took, _ = timed_get(url, timeout=5, **kw)
        got.append((status == 200, took))
        time.sleep(every)
    answered = [t for ok, t in got if ok]
    if not answered:
        return f"0/{n} answered (all timed out at 5 s)"
    return f"{len(answered)}/{n} answered, median {statistics.median(answered) * 1000:.0f} ms, max {max(answered) * 1000:.0f} ms"


def slow_reader(url: str, stop: threading.Event) -> None:
    try:
        with session().get(url, headers=AUTH, stream=True, timeout=30) as r:
            for _ in r.iter_content(64 << 10):
                if stop.wait(0.5):
                    return
    except OSError:
        pass


def curl_rate(args: list[str], size: int, tries: int) -> float:
    best = 0.0
    for _ in range(tries):
        started = time.monotonic()
        subprocess.run(["curl", "-sS", "-o", "/dev/null", *args], check=True)
        best = max(best, size / (time.monotonic() - started) / 1e6)
    return best


def measure(worker: str, root: Path, args: argparse.Namespace) -> None:
    svc, url = start(worker, root, int(worker.split("-")[1]) if "-" in worker else 32, args.gevent_path)
    try:
        print(f"\n== {worker}")
        print(f"idle /healthz: {samples(f'{url}/healthz', every=0.1)}")
        for n in args.attackers:
            with Slowloris(int(url.rsplit(':', 1)[1]), n, 5.0) as attack:
                time.sleep(6)
                health = samples(f"{url}/healthz")
                listed = samples(f"{url}{API_PREFIX}", headers=AUTH)
            print(f"{n} slowloris: /healthz {health}; authenticated list {listed}; connections cut by the server: {attack.cut}")
        blob = root / "blob.bin"
        upload = f"{url}{API_PREFIX}/upload?name=bench-{worker}&filename=f.bin&format=other"
        up = curl_rate(["-H", f"Authorization: Bearer {SECRET}", "--data-binary", f"@{blob}", "-H",
                        "Content-Type: application/octet-stream", f"{upload}"], args.size, 1)
        model = session().get(f"{url}{API_PREFIX}?name=bench-{worker}", headers=AUTH, timeout=10).json()["models"][0]
        file_url = f"{url}{API_PREFIX}/{model['id']}/files/f.bin"
        down = curl_rate(["-H", f"Authorization: Bearer {SECRET}", file_url], args.size, 3)
        stop = threading.Event()
        readers = [threading.Thread(target=slow_reader, args=(file_url, stop), daemon=True) for _ in range(40)]
        for t in readers:
            t.start()
        time.sleep(2)
        print(f"40 slow authenticated readers: /healthz {samples(f'{url}/healthz')}")
        stop.set()
        print(f"curl upload {args.size >> 20} MiB: {up:.0f} MB/s; download (best of 3): {down:.0f} MB/s")
    finally:
        svc.stop()


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        worker, port, storage, threads = sys.argv[2:6]
        serve(worker, int(port), storage, int(threads))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", nargs="+", default=["guarded", "gthread"])
    ap.add_argument("--attackers", nargs="+", type=int, default=[48, 200])
    ap.add_argument("--size", type=parse_size, default=512 << 20)
    ap.add_argument("--gevent-path", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="slow-clients-") as tmp:
        root = Path(tmp)
        with open(root / "blob.bin", "wb") as f:
            for _ in range(args.size >> 20):
                f.write(os.urandom(1 << 20))
        for worker in args.workers:
            measure(worker, root, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
