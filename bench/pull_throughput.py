"""Pull a 1 GiB model from a local registry to one worker; compare with curl on the same blob.

Prints our throughput as a ratio to `curl -o FILE` measured in the same run, on
the same disk (target >= 0.8). Run: python bench/pull_throughput.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import OCIRegistry, push_ollama_model
from testbed.processes import RedisServer, Service, eldric, free_port, session, wait_until


def process_cpu(pid: int) -> float:
    """user + system CPU seconds a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def curl_seconds(url: str, dest: Path, verify: bool = False, registry_pid: int | None = None,
                 cpu: list | None = None) -> float:
    """curl into a file; with `verify`, also `sha256sum` it, as an operator checking by hand would."""
    os.sync()  # no dirty pages of an earlier run slowing this one down
    c0, r0 = children_cpu(), process_cpu(registry_pid) if registry_pid else 0.0
    start = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", str(dest), url], check=True)
    if verify:
        subprocess.run(["sha256sum", str(dest)], check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if cpu is not None and registry_pid:
        cpu.append((children_cpu() - c0, process_cpu(registry_pid) - r0))
    dest.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", type=int, default=None, help="ELDRIC_DOWNLOAD_PARTS for the worker")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="eldric-bench-"))
    services: list[Service] = []
    try:
        redis_server = RedisServer(root).start()
        services.append(redis_server)
        with OCIRegistry(root / "oci") as oci:
            gguf = write_gguf_of_size(root / "model.gguf", args.size_mib << 20, name="bench")
            pushed = push_ollama_model(oci.url, "library/bench", "latest", gguf_path=gguf)
            gguf.unlink()
            digest = pushed["layers"]["application/vnd.ollama.image.model"]
            blob_url = f"{oci.url}/v2/library/bench/blobs/{digest}"
            env = {"ELDRIC_REDIS_URL": redis_server.url, "ELDRIC_OLLAMA_REGISTRY": oci.url}
            if args.parts:
                env["ELDRIC_DOWNLOAD_PARTS"] = str(args.parts)
            port = free_port()
            services.append(Service("controller", eldric("controller", "--port", str(port)), root, env=env).start())
            http = session()
            api = f"http://127.0.0.1:{port}/api/v1"
            wait_until(lambda: http.get(f"{api}/workers", timeout=2).ok, message="controller")
            print(f"blob: {pushed['manifest']['layers'][0]['size'] / 2**20:.0f} MiB", flush=True)
            curl_times, verified_times, our_times = [], [], []
            curl_cpu: list[tuple[float, float]] = []
            our_cpu: list[tuple[float, float]] = []
            reg_pid = oci.process.pid
            for r in range(args.rounds):
                curl_times.append(curl_seconds(blob_url, root / "curl.out", registry_pid=reg_pid, cpu=curl_cpu))
                verified_times.append(curl_seconds(blob_url, root / "curl.out", verify=True))
                name = f"bench-{r}"
                services.append(Service(name, eldric("worker", "--type", "inference", "--name", name, "--port", "0",
                                                     "--data-dir", str(root / name)), root, env=env).start())
                wait_until(lambda: any(w["id"] == name and w["online"] for w in http.get(f"{api}/workers").json()["workers"]),
                           timeout=30, message=name)
                os.sync()
                agent_pid = services[-1].proc.pid
                a0, r0 = process_cpu(agent_pid), process_cpu(reg_pid)
                job = http.post(f"{api}/models/pull", json={"model": "bench", "workers": [name]}).json()
                final = wait_until(lambda: (j := http.get(f"{api}/models/pull-jobs/{job['id']}").json())["state"]
                                   in ("completed", "failed") and j, timeout=600, interval=0.05, message="pull")
                w = final["workers"][0]
                assert w["state"] == "completed", w
                our_times.append(w["finished_at"] - w["started_at"])
                our_cpu.append((process_cpu(agent_pid) - a0, process_cpu(reg_pid) - r0))
                shutil.rmtree(root / name, ignore_errors=True)
            size = pushed["manifest"]["layers"][0]["size"] + sum(layer["size"] for layer in pushed["manifest"]["layers"][1:])
            best_curl, best_ours = min(curl_times), min(our_times)
            print(f"curl -o file : {size / best_curl / 1e6:8.1f} MB/s  ({best_curl:.2f} s; runs {', '.join(f'{t:.2f}' for t in curl_times)})")
            print(f"eldric pull  : {size / best_ours / 1e6:8.1f} MB/s  ({best_ours:.2f} s; runs {', '.join(f'{t:.2f}' for t in our_times)})")
            best_verified = min(verified_times)
            print(f"curl+sha256sum: {size / best_verified / 1e6:8.1f} MB/s  ({best_verified:.2f} s)")
            print(f"ratio eldric/curl throughput: {best_curl / best_ours:.2f}  (target >= 0.8)")
            print(f"ratio eldric/(curl then sha256sum): {best_verified / best_ours:.2f}  (both verify the digest)")
            # CPU accounting: on a machine with few cores the registry, the receiver and the
            # hash share them, so their CPU time bounds how fast any verified download can be.
            cores = os.cpu_count() or 1
            c_own, c_reg = min(curl_cpu)
            e_own, e_reg = min(our_cpu)
            floor = (e_own + e_reg) / cores
            print(f"CPU s per run: curl {c_own:.2f} + registry {c_reg:.2f}; eldric agent {e_own:.2f} "
                  f"(receive, write, sha256) + registry {e_reg:.2f}")
            print(f"on {cores} cores that CPU alone takes >= {floor:.2f} s: ratio ceiling here {best_curl / floor:.2f}")
    finally:
        for svc in reversed(services):
            svc.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
