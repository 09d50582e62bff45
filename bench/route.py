"""Routed inference: tokens/s and time to first token through the controller vs straight to the backend.

One run starts redis-server, docker-registry, the controller, one inference agent with
ELDRIC_BACKENDS=llamacpp and a real `python -m llama_cpp.server` on the GGUF the pull placed, then
alternates the same streamed request (temperature 0, so both paths generate the same tokens)
straight to llama.cpp's server and through the controller (controller -> agent -> llama.cpp), for
OpenAI's /v1/chat/completions (SSE passed through) and Ollama's /api/chat (translated by the agent).
Prints the medians and the ratios (targets: throughput >= 0.95 of direct, first token <= +10 ms).

Run: python bench/route.py [--rounds 15] [--tokens 64] [--width 256 --layers 4]
     python bench/route.py --fleet 1000   (the routing read alone: N workers x 100 models in a real Redis)
The default model (width 256, 4 layers) generates at a few hundred tokens/s on 2 cores, faster than
any real model: the per-token cost of the two hops shows more here than it would in production.
"""

from __future__ import annotations

import argparse
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
        for line in resp.iter_lines(chunk_size=1):  # each line as soon as it is whole
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


def measure(http: requests.Session, url: str, body: dict, ollama: bool, numbers) -> tuple[float, float, int]:
    """One answer of at least MIN_TOKENS tokens (prompts whose answer ends at once are skipped)."""
    for _ in range(20):
        found = stream_timing(http, url, body, ollama, next(numbers))
        if found is not None:
            return found
    raise RuntimeError(f"{url}: 20 prompts in a row answered fewer than {MIN_TOKENS} tokens")


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
    services.append(Service("controller", eldric("controller", "--port", str(port)), root, env=env, cwd=REPO).start())
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
    services.append(Service("llama", [sys.executable, "-m", "llama_cpp.server", "--model", str(placed),
                                      "--host", "127.0.0.1", "--port", llama_url.rsplit(":", 1)[1],
                                      "--n_ctx", "512", "--n_threads", "1",
                                      # the straight requests are not counted in flight, so the agent's report
                                      # may ask /v1/models during one: queue it rather than end the answer
                                      "--interrupt_requests", "false"], root, cwd=REPO).start())
    wait_until(lambda: http.get(f"{llama_url}/v1/models", timeout=2).ok, timeout=60, message="llama server")
    wait_until(lambda: http.get(f"{controller}/api/ps").json()["models"], timeout=15, message="/api/ps")
    return {"controller": controller, "llama": llama_url, "agent": agent}


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
    args = parser.parse_args()
    if args.fleet:
        fleet(args.fleet)
        return
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
            numbers = itertools.count(1)
            for url, body, is_ollama in paths.values():  # warm-up: model pages, connections, caches
                measure(http, url, body, is_ollama, numbers)
            results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, (url, body, is_ollama) in paths.items():  # interleaved: drift hits all alike
                    results[name].append(measure(http, url, body, is_ollama, numbers))
            report(results, args)
    finally:
        for svc in reversed(services):
            svc.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(results: dict[str, list[tuple[float, float, int]]], args) -> None:
    summary = {}
    for name, runs in results.items():
        ttft = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[2] / (r[0] + r[1]) for r in runs)  # tokens over the whole answer, end to end
        tokens = statistics.median(r[2] for r in runs)
        summary[name] = (ttft, rate)
        print(f"{name:32s} first token {ttft * 1000:7.2f} ms   {rate:8.1f} tokens/s   ({tokens:.0f} tokens, "
              f"{len(runs)} runs)")
    base_ttft, base_rate = summary["direct /v1/chat/completions"]
    for name in list(summary)[1:]:
        ttft, rate = summary[name]
        print(f"{name}: throughput ratio {rate / base_rate:.3f} (target >= 0.95), "
              f"first token +{(ttft - base_ttft) * 1000:.2f} ms (target <= 10 ms)")
    print(f"model: width {args.width}, {args.layers} layers; max_tokens {args.tokens}")


if __name__ == "__main__":
    main()
