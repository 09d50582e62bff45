"""Benchmark: the registry and an agent serving a large file, under gunicorn (now) and werkzeug's dev server (before).

One registry storage holds a 1 GiB model file. The same file is fetched with `curl -o /dev/null`:
1. from nginx serving the blob directory (a plain static server using sendfile): the reference;
2. from `eldric registry` (gunicorn gthread, send_file + sendfile);
3. from the same registry app on werkzeug's threaded development server (how it ran before);
4. from a worker agent's blob endpoint (`/blobs/<digest>`, what peers read): its gunicorn child process;
5. from the same agent app on werkzeug's threaded server in a thread of the agent (how it ran before).
Each as a whole file and as 64 MiB ranges (what agents ask for), 4 concurrent clients, best of 3,
page cache warm (the file is read once first). Prints MB/s and each ratio to nginx.

    python bench/registry_download.py [--size 1G] [--dir /var/tmp]

Needs nginx (`apt-get install nginx-light`); installs it when missing and running as root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.registry_upload import write_gguf
from eldric.client.registry import ModelRegistryClient
from eldric.core.settings import parse_size
from testbed.processes import RedisServer, Service, eldric, free_port, session, wait_until

CLIENTS = 4
RANGE = 64 << 20


def ensure_nginx() -> str:
    found = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if not found and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
        found = "/usr/sbin/nginx"
    if not found:
        sys.exit("needs nginx: apt-get install nginx-light")
    return found


def start_nginx(nginx: str, root: Path, work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""
        {"user root;" if os.geteuid() == 0 else ""} daemon off; worker_processes 2; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
        events {{ worker_connections 64; }}
        http {{ access_log off; sendfile on; tcp_nopush on;
                client_body_temp_path {work}/nginx-tmp; proxy_temp_path {work}/nginx-tmp;
                fastcgi_temp_path {work}/nginx-tmp; uwsgi_temp_path {work}/nginx-tmp; scgi_temp_path {work}/nginx-tmp;
                server {{ listen 127.0.0.1:{port}; root {root}; }} }}
    """))
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, port


def curl_seconds(url: str, size: int, ranged: bool) -> float:
    """Wall time for CLIENTS concurrent curls to fetch the whole file each (ranged: in RANGE pieces, split over them)."""
    if ranged:
        pieces = [f"{s}-{min(size, s + RANGE) - 1}" for s in range(0, size, RANGE)]
        jobs = [pieces[i::CLIENTS] for i in range(CLIENTS)]
    else:
        jobs = [[None]] * CLIENTS

    def run(ranges: list[str | None]) -> None:
        for r in ranges:
            argv = ["curl", "-sf", "-o", "/dev/null", url] + (["-r", r] if r else [])
            subprocess.run(argv, check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(run, jobs))
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    size = parse_size(args.size)
    nginx = ensure_nginx()
    work = Path(tempfile.mkdtemp(prefix="eldric-bench-dl-", dir=args.dir))
    services: list[Service] = []
    procs: list[subprocess.Popen] = []
    try:
        storage = work / "storage"
        port = free_port()
        services.append(Service("registry", eldric("registry", "--port", str(port), "--storage", str(storage)), work,
                                env={"ELDRIC_REGISTRY_MIN_FREE": "0"}).start())
        reg = f"http://127.0.0.1:{port}"
        wait_until(lambda: session().get(f"{reg}/healthz", timeout=2).ok, message="registry")
        model_file = work / "bench.gguf"
        write_gguf(model_file, size)
        model = ModelRegistryClient(reg).upload_model({"bench.gguf": model_file}, name="bench")
        model_file.unlink()
        blob = storage / model["files"][0]["location"]
        real_size = blob.stat().st_size
        path = f"/api/v1/model-registry/{model['id']}/files/bench.gguf"

        dev_port = free_port()
        dev = textwrap.dedent(f"""
            from werkzeug.serving import run_simple
            from registry.server import RegistrySettings, create_registry_app
            app = create_registry_app({str(storage)!r}, RegistrySettings(min_free_bytes=0), background=False)
            run_simple("127.0.0.1", {dev_port}, app, threaded=True)
        """)
        services.append(Service("registry-werkzeug", [sys.executable, "-c", dev], work,
                                cwd=Path(__file__).resolve().parents[1]).start())
        wait_until(lambda: session().get(f"http://127.0.0.1:{dev_port}/healthz", timeout=2).ok, message="werkzeug")
        # An agent holding the same bytes in its store (a hard link), served by its gunicorn child, and the
        # same agent app on werkzeug as it ran before.
        redis_server = RedisServer(work).start()
        services.append(redis_server)
        agent_dir = work / "agent"
        agent_blob = agent_dir / "ollama" / "models" / "blobs" / blob.name
        agent_blob.parent.mkdir(parents=True)
        os.link(blob, agent_blob)
        agent_port, agent_dev_port = free_port(), free_port()
        services.append(Service("agent", eldric("worker", "--type", "inference", "--name", "bench-agent", "--port",
                                                str(agent_port), "--data-dir", str(agent_dir)), work,
                                env={"ELDRIC_REDIS_URL": redis_server.url}).start())
        agent_dev = textwrap.dedent(f"""
            import redis
            from werkzeug.serving import run_simple
            from worker_agent.catalog import Catalog
            from worker_agent.ollama_store import OllamaStore
            from worker_agent.runtime import Agent
            from worker_agent.server import create_agent_app
            from worker_agent.settings import AgentSettings
            s = AgentSettings(worker_id="bench-dev", worker_type="inference", data_dir={str(agent_dir)!r},
                              redis_url={redis_server.url!r})
            agent = Agent(settings=s, redis=redis.Redis.from_url(s.redis_url), store=OllamaStore(s.models_dir),
                          catalog=Catalog(s.data_dir / "catalog"))
            run_simple("127.0.0.1", {agent_dev_port}, create_agent_app(agent), threaded=True)
        """)
        services.append(Service("agent-werkzeug", [sys.executable, "-c", agent_dev], work,
                                cwd=Path(__file__).resolve().parents[1]).start())
        digest = blob.name.replace("-", ":", 1)
        agent_url, agent_dev_url = (f"http://127.0.0.1:{p}/blobs/{digest}" for p in (agent_port, agent_dev_port))
        for url in (agent_url, agent_dev_url):
            wait_until(lambda url=url: session().head(url, timeout=2).ok, timeout=60, message=url)
        (work / "nginx-tmp").mkdir(exist_ok=True)
        proc, nginx_port = start_nginx(nginx, blob.parent, work)
        procs.append(proc)
        nginx_url = f"http://127.0.0.1:{nginx_port}/{blob.name}"
        wait_until(lambda: session().head(nginx_url, timeout=2).ok, message="nginx")

        targets = {"nginx (reference)": nginx_url, "eldric registry (gunicorn)": reg + path,
                   "registry on werkzeug (before)": f"http://127.0.0.1:{dev_port}{path}",
                   "agent blobs (gunicorn child)": agent_url, "agent blobs on werkzeug (before)": agent_dev_url}
        curl_seconds(nginx_url, real_size, ranged=False)  # warm the page cache
        print(f"{real_size / 2**30:.2f} GiB file, {CLIENTS} concurrent clients, best of 3")
        for ranged in (False, True):
            kind = f"{RANGE >> 20} MiB ranges" if ranged else "whole file"
            best = {name: min(curl_seconds(url, real_size, ranged) for _ in range(3)) for name, url in targets.items()}
            ref = best["nginx (reference)"]
            for name, secs in best.items():
                mbs = (real_size * (1 if ranged else CLIENTS)) / secs / 1e6
                print(f"{kind:>14} | {name:<33} {mbs:9.1f} MB/s  {secs:6.2f} s  ratio to nginx {ref / secs:5.2f}")
    finally:
        for p in procs:
            p.terminate()
        for s in services:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
