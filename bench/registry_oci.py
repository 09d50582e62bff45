"""Benchmark: the data node serving a 1 GiB blob through /v2/ against nginx serving the same file.

A 1 GiB blob is pushed to `eldric registry` through the OCI push API (POST + PUT ?digest=,
streamed from disk, digest checked by the registry). Then, in the same run, 4 concurrent
`curl -o /dev/null` clients fetch it from
1. nginx serving the registry's blob directory (a plain static server using sendfile): the reference;
2. `GET /v2/library/bench/blobs/<digest>` on the registry (gunicorn gthread, send_file + sendfile),
as a whole file each and as 64 MiB ranges split over the clients (what agents ask for), best of 5,
page cache warm. Prints MB/s and the ratio to nginx (target: at least 0.8).

    python bench/registry_oci.py [--size 1G] [--dir /var/tmp]

Needs nginx (`apt-get install nginx-light`); installs it when missing and running as root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.registry_download import CLIENTS, RANGE, curl_seconds, ensure_nginx, start_nginx
from eldric.core.settings import parse_size
from testbed.oci_registry import push_blob
from testbed.processes import Service, eldric, free_port, session, wait_until

TARGET = 0.8


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for offset in range(0, size, 1 << 20):
            f.write(os.urandom(min(1 << 20, size - offset)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    size = parse_size(args.size)
    nginx = ensure_nginx()
    work = Path(tempfile.mkdtemp(prefix="eldric-bench-oci-", dir=args.dir))
    services: list[Service] = []
    procs: list[subprocess.Popen] = []
    try:
        storage = work / "storage"
        port = free_port()
        services.append(Service("registry", eldric("registry", "--port", str(port), "--storage", str(storage),
                                                    "--min-free", "0", "--upstream", "none"), work).start())
        reg = f"http://127.0.0.1:{port}"
        wait_until(lambda: session().get(f"{reg}/healthz", timeout=2).ok, message="registry")
        source = work / "bench.bin"
        write_random(source, size)
        started = time.perf_counter()
        digest = push_blob(reg, "library/bench", source)
        push_seconds = time.perf_counter() - started
        source.unlink()
        blob = storage / "blobs" / digest.replace(":", "-")
        (work / "nginx-tmp").mkdir(exist_ok=True)
        proc, nginx_port = start_nginx(nginx, blob.parent, work)
        procs.append(proc)
        nginx_url = f"http://127.0.0.1:{nginx_port}/{blob.name}"
        wait_until(lambda: session().head(nginx_url, timeout=2).ok, message="nginx")
        targets = {"nginx (reference)": nginx_url, "registry /v2/ blobs": f"{reg}/v2/library/bench/blobs/{digest}"}
        curl_seconds(nginx_url, size, ranged=False)  # warm the page cache
        print(f"{size / 2**30:.2f} GiB blob pushed through /v2/ in {push_seconds:.2f} s "
              f"({size / push_seconds / 1e6:.0f} MB/s, digest checked); {CLIENTS} concurrent clients, best of 5")
        ratios = []
        for ranged in (False, True):
            kind = f"{RANGE >> 20} MiB ranges" if ranged else "whole file"
            best = {name: min(curl_seconds(url, size, ranged) for _ in range(5)) for name, url in targets.items()}
            ref = best["nginx (reference)"]
            for name, secs in best.items():
                mbs = (size * (1 if ranged else CLIENTS)) / secs / 1e6
                print(f"{kind:>14} | {name:<22} {mbs:9.1f} MB/s  {secs:6.2f} s  ratio to nginx {ref / secs:5.2f}")
            ratios.append(ref / best["registry /v2/ blobs"])
        worst = min(ratios)
        print(f"ratio (worst of whole file and ranges): {worst:.2f}  target >= {TARGET}: "
              f"{'met' if worst >= TARGET else 'MISSED'}")
        return 0 if worst >= TARGET else 1
    finally:
        for p in procs:
            p.terminate()
        for s in services:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
