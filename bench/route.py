"""Routed inference: tokens/s and time to first token through the controller vs straight to the backend.

One run starts redis-server, docker-registry, the controller, one inference agent with
ELDRIC_BACKENDS=llamacpp and a real `python -m llama_cpp.server` on the GGUF the pull placed, then
alternates the same streamed request (temperature 0, so both paths generate the same tokens)
straight to llama.cpp's server and through the controller (controller -> agent -> llama.cpp), for
OpenAI's /v1/chat/completions (SSE passed through) and Ollama's /api/chat (translated by the agent).
Prints the medians and the ratios (targets: throughput >= 0.95 of direct, first token <= +10 ms).

Run: python bench/route.py [--rounds 15] [--tokens 64] [--width 256 --layers 4] [--server gunicorn|werkzeug] [--pin]
     python bench/route.py --fleet 1000   (the routing read alone: N workers x 100 models in a real Redis)
The default model (width 256, 4 layers) generates at a few hundred tokens/s on 2 cores, faster than
any real model: the per-token cost of the two hops shows more here than it would in production.
"""

from __future__ import annotations

import argparse
import os
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import OCIRegistry, push_ollama_model
from testbed.processes import RedisServer, Service, eldric, free_port, session, wait_until

REPO = Path(__file__).resolve().parents[1]
MIN_TOKENS = 8
PROMPT = "Tell me a long story about a lighthouse keeper."


def stream_timing(http: requests.Session, url: str, body: dict, ollama: bool, n: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds from it to the end of the answer, tokens) of one streamed answer.

    Each request's prompt starts with its own number: llama-cpp-python reuses the evaluated prefix of
    the previous prompt, and a prompt it has wholly evaluated before sometimes ends at once (no tokens).
    """
    body = {**body, "messages": [{"role": "user", "content": f"{n}. {PROMPT}"}]}
    start = time.perf_counter()
    first = end = None
    tokens = 0
    with http.post(url, json=body, stream=True, timeout=120) as resp:
        resp.raise_for_status()
        for line in lines_of(resp):
            if ollama:
                if not line:
                    continue
                event = json.loads(line)
                if event.get("done"):
                    tokens = event.get("eval_count", tokens)  # llama.cpp's tokens, the empty pieces too
                    end = time.perf_counter()
                    continue
                text = (event.get("message") or {}).get("content")
            else:
                if line == b"data: [DONE]":
                    end = time.perf_counter()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                text = json.loads(line[6:])["choices"][0]["delta"].get("content")
                tokens += text is not None  # a token whose bytes end mid-character arrives as ""
            if text and first is None:
                first = time.perf_counter()
    if first is None or end is None or tokens < MIN_TOKENS:
        return None  # the random test model stopped at once (end of text): not a measurement
    return first - start, end - first, tokens


def lines_of(resp: requests.Response):
    """Each line as soon as it is whole, from whatever each read returns (reading byte by byte, as
    iter_lines(chunk_size=1) does, costs the client more CPU than the relays it measures)."""
    pending = b""
    for chunk in resp.iter_content(chunk_size=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line.rstrip(b"\r") for line in lines)
    if pending:
        yield pending


def good_prompts(http: requests.Session, url: str, body: dict, count: int) -> list[int]:
    """`count` prompt numbers whose answers (straight from the server) have at least MIN_TOKENS tokens:
    every path is then measured on the same prompts, so the same tokens in the same pieces."""
    found: list[int] = []
    for n in itertools.count(1):
        if len(found) == count:
            return found
        if n > 20 * count:
            raise RuntimeError(f"{url}: too few prompts answered {MIN_TOKENS} tokens or more")
        if stream_timing(http, url, body, False, n) is not None:
            found.append(n)
    return found


def start_stack(root: Path, services: list[Service], oci: OCIRegistry, args) -> dict[str, str]:
    """redis, controller, one llama.cpp agent with the model pulled, its llama.cpp server: their URLs."""
    redis_server = RedisServer(root).start()
    services.append(redis_server)
    gguf = write_llama_gguf(root / "bench.gguf", name="bench", width=args.width, ff=2 * args.width,
                            n_layers=args.layers)
    push_ollama_model(oci.url, "library/bench", "latest", gguf_path=gguf)
    llama_url = f"http://127.0.0.1:{free_port()}"
    env = {"ELDRIC_REDIS_URL": redis_server.url, "ELDRIC_OLLAMA_REGISTRY": oci.url,
           "ELDRIC_HEARTBEAT_SECONDS": "1", "ELDRIC_DISK_RESERVE_BYTES": "0",
           "ELDRIC_URL_ALLOWLIST": "127.0.0.0/8,::1"}
    port = free_port()
    if args.server == "gunicorn":  # as deploy/systemd/eldric-controller.service runs it
        argv = [sys.executable, "-m", "gunicorn", "--config", str(REPO / "deploy" / "gunicorn.conf.py"), "controller:create_app()"]
        env = {**env, "ELDRIC_CONTROLLER_PORT": str(port)}
    else:
        argv = eldric("controller", "--port", str(port))
    services.append(Service("controller", argv, root, env=env, cwd=REPO).start())
    controller = f"http://127.0.0.1:{port}"
    http = session()
    wait_until(lambda: http.get(f"{controller}/healthz", timeout=2).ok, message="controller")
    services.append(Service("agent", eldric("worker", "--type", "inference", "--name", "bench-1", "--port", "0",
                                            "--data-dir", str(root / "bench-1")), root,
                            env={**env, "ELDRIC_BACKENDS": "llamacpp", "ELDRIC_LLAMACPP_URL": llama_url},
                            cwd=REPO).start())
    agent = wait_until(lambda: next((w["address"] for w in http.get(f"{controller}/api/v1/workers").json()["workers"]
                                     if w["id"] == "bench-1" and w["online"]), None), timeout=30, message="agent")
    job = http.post(f"{controller}/api/v1/models/pull", json={"model": "bench", "workers": ["bench-1"]}).json()
    wait_until(lambda: http.get(f"{controller}/api/v1/models/pull-jobs/{job['id']}").json()["state"] == "completed",
               timeout=120, message="pull")
    placed = root / "bench-1" / "backends" / "llamacpp" / "bench.gguf"
    pin = ["taskset", "-c", "0"] if args.pin else []  # the backend gets CPU 0 to itself
    services.append(Service("llama", [*pin, sys.executable, "-m", "llama_cpp.server", "--model", str(placed),
                                      "--host", "127.0.0.1", "--port", llama_url.rsplit(":", 1)[1],
                                      "--n_ctx", "512", "--n_threads", "1",
                                      # the straight requests are not counted in flight, so the agent's report
                                      # may ask /v1/models during one: queue it rather than end the answer
                                      "--interrupt_requests", "false"], root, cwd=REPO).start())
    wait_until(lambda: http.get(f"{llama_url}/v1/models", timeout=2).ok, timeout=60, message="llama server")
    wait_until(lambda: http.get(f"{controller}/api/ps").json()["models"], timeout=15, message="/api/ps")
    return {"controller": controller, "llama": llama_url, "agent": agent}


class CpuMeter:
    """CPU seconds (user + system, from /proc) the controller's and the agent's process trees spend, per answer
    of each path: what the relays cost, beside the wall-clock figures (Linux only; nothing elsewhere)."""

    def __init__(self, services: list[Service]) -> None:
        roots = {svc.name: svc.proc.pid for svc in services if svc.name in ("controller", "agent", "llama")}
        parents = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        self.trees = {name: [pid, *self._descendants(pid, parents)] for name, pid in roots.items()}
        self.spent: dict[str, dict[str, float]] = {}

    @staticmethod
    def _descendants(pid: int, parents: dict[int, int]) -> list[int]:
        kids = [p for p, parent in parents.items() if parent == pid]
        return [*kids, *(d for k in kids for d in CpuMeter._descendants(k, parents))]

    def read(self) -> dict[str, float]:
        out = {}
        for name, pids in self.trees.items():
            total = 0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])
                except (OSError, ValueError, IndexError):
                    continue
            out[name] = total / os.sysconf("SC_CLK_TCK")
        return out

    def add(self, path: str, before: dict[str, float], after: dict[str, float]) -> None:
        spent = self.spent.setdefault(path, {"answers": 0})
        spent["answers"] += 1
        for name in after:
            spent[name] = spent.get(name, 0.0) + after[name] - before.get(name, 0.0)

    def report(self) -> None:
        for path, spent in self.spent.items():
            n = spent["answers"]
            print(f"{path:32s} CPU per answer: " + ", ".join(f"{name} {spent[name] / n * 1000:5.1f} ms"
                                                           for name in ("llama", "agent", "controller") if name in spent))


def fleet(n: int) -> None:
    """What choosing a worker costs the controller with `n` workers of 100 models each, one loaded."""
    import redis

    from controller import routing
    from controller.ollama_route import running_models
    from eldric.cluster import workers

    root = Path(tempfile.mkdtemp(prefix="eldric-route-fleet-"))
    server = RedisServer(root).start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        models = [{"name": f"m{i}:latest", "digest": "sha256:" + "b" * 64, "size": 10, "backends": ["llamacpp"],
                   "details": {"family": "llama"}} for i in range(100)]
        loaded = [{"name": "m1:latest", "model": "m1:latest", "size": 10, "digest": "b" * 64, "details": {},
                   "expires_at": "2318-01-01T00:00:00Z", "size_vram": 0, "context_length": 0, "backend": "llamacpp",
                   "backend_model": "/x/m1.gguf"}]
        for i in range(n):
            wid = f"w{i:04d}"
            workers.register(client, {"id": wid, "type": "inference", "address": f"http://{wid}:1"}, ttl=600)
            workers.publish_inventory(client, wid, models)
            workers.publish_loaded(client, wid, loaded, ttl=600)
        cache = routing.HolderCache()
        for label, fn in (("choose a worker, uncached (once a second)", lambda: routing.candidates(client, "m1")),
                          ("choose a worker, cached (in flight read)",
                           lambda: routing.rank(routing.candidates(client, "m1", cache)[1])),
                          ("/api/ps merge", lambda: running_models(client))):
            times = []
            for _ in range(20):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1000)
            print(f"{n} workers x 100 models: {label:42s} {statistics.median(times):7.2f} ms (median of 20)")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fleet", type=int, default=0, help="measure only the routing read with this many workers")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens / num_predict per request")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--pin", action="store_true",
                        help="llama.cpp alone on CPU 0, everything else (controller, agent, Redis, this client) on CPU 1: "
                             "as on a real node, where the model runs on a GPU or cores of its own")
    parser.add_argument("--server", choices=("gunicorn", "werkzeug"), default="gunicorn",
                        help="the controller's HTTP server: gunicorn as deployed, or `eldric controller`'s werkzeug")
    args = parser.parse_args()
    if args.fleet:
        fleet(args.fleet)
        return
    if args.pin:
        os.sched_setaffinity(0, {1})  # inherited by every service started below but llama.cpp
    root = Path(tempfile.mkdtemp(prefix="eldric-route-bench-"))
    services: list[Service] = []
    try:
        with OCIRegistry(root / "oci") as oci:
            urls = start_stack(root, services, oci, args)
            http = session()
            openai = {"model": "bench", "max_tokens": args.tokens, "temperature": 0, "seed": 1, "stream": True}
            ollama_body = {"model": "bench", "stream": True,
                           "options": {"num_predict": args.tokens, "temperature": 0, "seed": 1}}
            paths = {"direct /v1/chat/completions": (f"{urls['llama']}/v1/chat/completions", openai, False),
                     "agent only (one hop)": (f"{urls['agent']}/inference/llamacpp/v1/chat/completions?model=bench:latest",
                                              openai, False),
                     "routed /v1/chat/completions": (f"{urls['controller']}/v1/chat/completions", openai, False),
                     "routed /api/chat (translated)": (f"{urls['controller']}/api/chat", ollama_body, True)}
            prompts = good_prompts(http, paths["direct /v1/chat/completions"][0], openai, args.rounds)
            for url, body, is_ollama in paths.values():  # warm-up: model pages, connections, caches
                stream_timing(http, url, body, is_ollama, prompts[0])
            results: dict[str, dict[int, tuple[float, float, int]]] = {name: {} for name in paths}
            cpu = CpuMeter(services)
            for r in range(args.rounds):
                # Interleaved (drift hits all alike), and in a Latin square: every path answers every prompt
                # once, and no two requests in a row share a prompt (llama-cpp-python reuses the evaluated
                # prefix of the previous prompt, which would make a repeated one faster).
                for i, (name, (url, body, is_ollama)) in enumerate(paths.items()):
                    prompt = prompts[(r + i) % args.rounds]
                    before = cpu.read()
                    found = stream_timing(http, url, body, is_ollama, prompt)
                    cpu.add(name, before, cpu.read())
                    if found is None:
                        raise RuntimeError(f"{name}: fewer than {MIN_TOKENS} tokens for a prompt that had them straight")
                    results[name][prompt] = found
            report(results, args)
            cpu.report()
    finally:
        for svc in reversed(services):
            svc.stop()
        shutil.rmtree(root, ignore_errors=True)


def _rate(run: tuple[float, float, int]) -> float:
    """Generation speed: tokens over the time from the first token to the end of the answer (the first
    token's wait is the other figure). A prompt's tokens are the same on every path, so the ratio of two
    paths' rates is the ratio of their generation times."""
    return run[2] / run[1]


def report(results: dict[str, dict[int, tuple[float, float, int]]], args) -> None:
    """Medians per path, then each path against the straight one prompt by prompt (the same prompt's
    answer is the same tokens on every path, so the pairs differ only by the path)."""
    for name, runs in results.items():
        ttft = statistics.median(r[0] for r in runs.values())
        rate = statistics.median(_rate(r) for r in runs.values())
        tokens = statistics.median(r[2] for r in runs.values())
        print(f"{name:32s} first token {ttft * 1000:7.2f} ms   {rate:8.1f} tokens/s   ({tokens:.0f} tokens, "
              f"{len(runs)} prompts)")
    direct = results["direct /v1/chat/completions"]
    for name in list(results)[1:]:
        runs = results[name]
        ratio = statistics.median(_rate(runs[p]) / _rate(direct[p]) for p in direct)
        extra = statistics.median(runs[p][0] - direct[p][0] for p in direct)
        print(f"{name}: throughput ratio {ratio:.3f} (target >= 0.95), first token {extra * 1000:+.2f} ms "
              f"(target <= +10 ms), medians of the per-prompt pairs")
    print(f"model: width {args.width}, {args.layers} layers; max_tokens {args.tokens}; controller on {args.server}"
          + ("; llama.cpp pinned to CPU 0, the rest to CPU 1" if args.pin else "; nothing pinned"))


if __name__ == "__main__":
    main()
