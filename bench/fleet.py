"""The control plane at fleet size: W virtual agents, a real controller, a pull to all of them (issue 13).

For each size W (default 100 and 1000) it starts a private redis-server (once), `eldric controller`
(once, as the command runs it: werkzeug's threaded server, one thread per connection) and, per size,
1-4 processes of bench/fleet_agents.py simulating W agents on the real Celery/Redis contract (they
register, heartbeat, publish inventories of `--models` models, consume their direct queues with kombu,
and run each pull through the agent's job runner with the download simulated: `--pull-mb` MB at
`--rate-mbps` MB/s, progress at the agent's throttle; see that module). 90 % of the workers are
inference workers (they pull), every tenth a data worker. Then, at each size:

1. `--rounds` pulls of one model to every inference worker, one after the other, each to completion.
   For each: POST /api/v1/models/pull until its 202; while the pull runs, GET /api/v1/models,
   GET /api/v1/workers and GET of the job (all targets) in a loop paced by `--sample-interval`
   (a sample counts when it started before the job ended); the time from the POST to the job's
   final record (seen on the job's event channel); over that same window, the controller
   process's CPU seconds (/proc/<pid>/stat, with its reaped children), Redis commands per second
   per pulling worker (INFO stats `total_commands_processed`: every client's, so the controller's
   reads for the samples count too) and Redis writes per second per pulling worker (INFO
   commandstats, the commands whose COMMAND INFO flags say `write`; commands run by the job
   store's Lua script count one by one). Medians over the rounds.
2. One long pull (`--stream-seconds` of simulated download) with `--streams` clients following the
   job's event stream (GET /api/v1/models/pull-jobs/<id>/events), all started right after the 202,
   each in a thread reading the raw stream: how many opened (status 200 and their snapshot arrived)
   before the job ended; how many failed (not 200, connection reset or cut, or the stream ended
   before its `done` event, e.g. `end {"reason": "unavailable"}`), grouped by what the client saw;
   GET /api/v1/workers every `--sample-interval` while at least one stream was open (with how many
   were); the same Redis and CPU figures as above over this pull (its writes per second are the
   steady rate, not dominated by each pull's fixed writes as in 2-second pulls); and how many clients
   Redis closed for their output buffer (its log), all within `--stream-timeout`.

Prints the figures per size, the growth from the smallest to the largest size, and the goals missed.
Goals (issue 13): at 1000 workers x 100 models, GET models <= 200 ms, GET workers <= 50 ms, POST pull
202 <= 1 s, one job <= 100 ms, GET workers <= 50 ms while the streams are open; at every size, every
pull completes, every stream opens before the long pull ends and is held to its `done` with no error,
Redis writes <= 10 per second per pulling worker over the long pull. Exits 1 when one is missed,
unless --no-fail. The bench's own clients (500 stream threads, the samples) share the machine with
the controller, Redis and the agents: read the growth, not the absolute figures. The stream clients
are in bench/fleet_streams.py, the counters and the job-end watch in bench/fleet_counters.py.

Run: python bench/fleet.py [--workers 100 1000] [--models 100] [--rounds 3] [--streams 500] [--keep-logs] [--no-fail]
Placement (issue 25): python bench/fleet.py --replicas 3 --models 100 --workers 1000 [--spread zone]
(bench/fleet_placement.py: time to the 202 and the balance over simulated worker records).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet_agents import worker_type
from bench.fleet_counters import Counters, JobWatch, output_buffer_cuts, process_cpu, read_counters, write_commands
from bench.fleet_streams import Streams
from eldric.cluster.jobs import state as jobstate
from testbed.processes import RedisServer, Service, eldric, free_port, session, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL_SIZE = 1000
AGENTS_PER_PROCESS = 250
MAX_AGENT_PROCESSES = 4
WRITES_GOAL = 10.0  # Redis writes per second per pulling worker


@dataclass
class PullRun:
    targets: int
    state: str
    post_ms: float
    seconds: float
    controller_cpu: float
    redis_cpu: float
    commands: float  # per second per pulling worker: every client's (agents, controller reads, the bench's INFO)
    writes: float  # per second per pulling worker
    writes_per_pull: float  # per pulling worker
    writes_by_command: dict[str, float]
    samples: dict[str, list[float]] = field(default_factory=dict)


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return (time.perf_counter() - start) * 1000, result


class Bench:
    """The controller under test, its Redis, and the watch on job ends."""

    def __init__(self, url: str, client: redis.Redis, controller_pid: int, timeout: float, pace: float,
                 redis_log: Path) -> None:
        self.url, self.client, self.pid, self.timeout, self.pace = url, client, controller_pid, timeout, pace
        self.redis_log = redis_log
        self.http = session()
        self.watch = JobWatch(client, controller_pid)
        self.writes: set[str] | None = None

    def get(self, path: str, **params) -> float:
        ms, resp = timed(lambda: self.http.get(f"{self.url}{path}", params=params, timeout=300))
        assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text[:300]}"
        return ms

    def post_pull(self, model: str) -> tuple[float, dict, Counters]:
        before = read_counters(self.client, self.pid)
        ms, resp = timed(lambda: self.http.post(f"{self.url}/api/v1/models/pull", json={"model": model}, timeout=300))
        assert resp.status_code == 202, resp.text[:300]
        return ms, resp.json(), before

    def pull(self, model: str) -> PullRun:
        """One pull to every inference worker, sampling the API until its final record."""
        post_ms, job, before = self.post_pull(model)
        samples: dict[str, list[float]] = {"GET /api/v1/models": [], "GET /api/v1/workers": [], "GET one job": []}
        deadline = time.monotonic() + self.timeout
        while self.watch.final(job["id"]) is None and time.monotonic() < deadline:
            for name, path in (("GET /api/v1/models", "/api/v1/models"), ("GET /api/v1/workers", "/api/v1/workers"),
                               ("GET one job", f"/api/v1/models/pull-jobs/{job['id']}")):
                if self.watch.final(job["id"]) is not None:
                    break
                samples[name].append(self.get(path))
            self.watch.final(job["id"], timeout=self.pace)  # a dashboard's pace, not a tight loop
        final = self.watch.final(job["id"], timeout=max(1.0, self.timeout - (time.time() - before.at)))
        return self.measure(job, post_ms, before, final, samples)

    def measure(self, job: dict, post_ms: float, before: Counters, final: tuple[str, Counters] | None,
                samples: dict[str, list[float]]) -> PullRun:
        """The pull's figures from the counters before its POST and at its final record."""
        state, after = final if final else ("not finished", read_counters(self.client, self.pid))
        targets = len(job["targets"])
        seconds = after.at - before.at
        if self.writes is None or set(after.calls) - set(before.calls):
            self.writes = write_commands(self.client, list(after.calls))
        per = seconds * targets
        by_command = {c: (after.calls[c] - before.calls.get(c, 0)) / per for c in after.calls if c in self.writes}
        return PullRun(targets=targets, state=state, post_ms=post_ms, seconds=seconds,
                       controller_cpu=after.controller_cpu - before.controller_cpu,
                       redis_cpu=after.redis_cpu - before.redis_cpu,
                       commands=(after.commands - before.commands) / per, writes=sum(by_command.values()),
                       writes_per_pull=sum(by_command.values()) * seconds,
                       writes_by_command={c: v for c, v in by_command.items() if v > 0}, samples=samples)


# --- live job streams -----------------------------------------------------------------------------

@dataclass
class StreamRun:
    streams: int
    opened: int
    failures: dict[str, int]
    workers_ms: list[float]
    open_during: list[int]  # streams open at each of those samples
    pull: PullRun
    output_buffer_cuts: int  # Redis closed a client (the controller's pub/sub) for its output buffer


def run_streams(bench: Bench, port: int, model: str, count: int, timeout: float) -> StreamRun:
    """A pull followed by `count` event streams: opened, failed, and GET /api/v1/workers while some are open."""
    cuts_before = output_buffer_cuts(bench.redis_log)
    post_ms, job, before = bench.post_pull(model)
    streams = Streams(port, job["id"], count, max_seconds=timeout + 60)
    deadline = time.monotonic() + timeout
    latencies: list[tuple[float, int]] = []  # GET /api/v1/workers while the job runs, with the streams open then
    while bench.watch.final(job["id"]) is None and time.monotonic() < deadline:
        open_now = streams.open_now
        if open_now:
            latencies.append((bench.get("/api/v1/workers"), open_now))
        bench.watch.final(job["id"], timeout=bench.pace)
    final = bench.watch.final(job["id"], timeout=max(0.0, deadline - time.monotonic()))
    while not streams.finished and time.monotonic() < deadline:
        time.sleep(0.2)
    streams.close()
    failures: dict[str, int] = {}
    for r in streams.results:
        if r.failure:  # grouped by what a client saw
            failures[r.failure] = failures.get(r.failure, 0) + 1
    return StreamRun(streams=count, opened=streams.opened_before(final[1].at if final else time.time()),
                     failures=failures, workers_ms=[ms for ms, _ in latencies], open_during=[n for _, n in latencies],
                     pull=bench.measure(job, post_ms, before, final, {}),
                     output_buffer_cuts=output_buffer_cuts(bench.redis_log) - cuts_before)


# --- one size ---------------------------------------------------------------------------------------

@dataclass
class SizeResult:
    workers: int
    pulling: int
    cold_models_ms: float
    pulls: list[PullRun]
    streams: StreamRun
    agent_stats: list[dict]
    agent_cpu: float


def start_agents(root: Path, redis_url: str, workers: int, models: int, catalog: dict[str, int], rate_mbps: float,
                 processes: int) -> list[Service]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "catalog.json").write_text(json.dumps(catalog))
    per = math.ceil(workers / processes)
    agents = []
    for p, first in enumerate(range(0, workers, per)):
        argv = [sys.executable, str(REPO_ROOT / "bench" / "fleet_agents.py"), "--redis-url", redis_url,
                "--first", str(first), "--count", str(min(per, workers - first)), "--models", str(models),
                "--catalog", str(root / "catalog.json"), "--rate-mbps", str(rate_mbps), "--root", str(root / f"agents{p}")]
        agents.append(Service(f"agents-{workers}-{p}", argv, root, cwd=REPO_ROOT).start())
    for svc in agents:
        wait_until(lambda svc=svc: "ready" in svc.log_tail(), timeout=300, interval=0.5,
                   message=f"{svc.name} ready\n{svc.log_tail()}")
    return agents


def stop_agents(agents: list[Service]) -> tuple[list[dict], float]:
    """Stop them; their stats lines and CPU seconds."""
    cpu = 0.0
    for svc in agents:
        try:
            cpu += process_cpu(svc.proc.pid)
        except OSError:
            pass
        svc.stop(timeout=30)
    stats = []
    for svc in agents:
        lines = [ln for ln in svc.log_tail(400).splitlines() if ln.startswith("stats ")]
        stats.append(json.loads(lines[-1][6:]) if lines else {"errors": [f"{svc.name}: no stats\n{svc.log_tail(20)}"]})
    return stats, cpu


def run_size(bench: Bench, args: argparse.Namespace, root: Path, redis_url: str, port: int, w: int) -> SizeResult:
    bench.client.flushdb()
    size = int(args.pull_mb * 1e6)
    catalog = {f"fleet-{r}:latest": size for r in range(args.rounds)}
    catalog["fleet-streams:latest"] = int(args.rate_mbps * 1e6 * args.stream_seconds)
    processes = args.agent_processes or min(MAX_AGENT_PROCESSES, math.ceil(w / AGENTS_PER_PROCESS))
    agents = start_agents(root / f"w{w}", redis_url, w, args.models, catalog, args.rate_mbps, processes)
    try:
        # The first read after registration parses every inventory (the controller's cache is cold).
        cold = bench.get("/api/v1/models")
        pulls = [bench.pull(f"fleet-{r}:latest") for r in range(args.rounds)]
        streams = run_streams(bench, port, "fleet-streams:latest", args.streams, args.stream_timeout)
    finally:
        stats, agent_cpu = stop_agents(agents)
    pulling = sum(1 for i in range(w) if worker_type(i) == "inference")
    return SizeResult(w, pulling, cold, pulls, streams, stats, agent_cpu)


# --- report ------------------------------------------------------------------------------------------

def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def rows(r: SizeResult) -> dict[str, float]:
    p = r.pulls
    out = {name: median([x for run in p for x in run.samples.get(name, [])])
           for name in ("GET /api/v1/models", "GET /api/v1/workers")}
    out["POST pull until 202"] = median([run.post_ms for run in p])
    out["GET one job"] = median([x for run in p for x in run.samples.get("GET one job", [])])
    out["pull to completion s"] = median([run.seconds for run in p])
    out["controller CPU s per pull"] = median([run.controller_cpu for run in p])
    out["Redis CPU s per pull"] = median([run.redis_cpu for run in p])
    out["Redis cmds/s per pulling wkr"] = median([run.commands for run in p])
    out["Redis writes/s per pulling wkr"] = median([run.writes for run in p])
    out["Redis writes per pull per wkr"] = median([run.writes_per_pull for run in p])
    s = r.streams
    out["long pull: to completion s"] = s.pull.seconds
    out["long pull: controller CPU s"] = s.pull.controller_cpu
    out["long pull: Redis cmds/s per wkr"] = s.pull.commands
    out["long pull: writes/s per wkr"] = s.pull.writes
    out["long pull: streams opened"] = s.opened
    out["long pull: streams failed/cut"] = sum(s.failures.values())
    out["long pull: streams open (median)"] = median(s.open_during)
    out["long pull: GET workers ms"] = median(s.workers_ms)
    return out


GOALS = {"GET /api/v1/models": 200, "GET /api/v1/workers": 50, "POST pull until 202": 1000, "GET one job": 100,
         "long pull: writes/s per wkr": WRITES_GOAL, "long pull: streams failed/cut": 0,
         "long pull: GET workers ms": 50}
EVERY_SIZE = {"long pull: writes/s per wkr", "long pull: streams failed/cut"}


def print_report(results: list[SizeResult], args: argparse.Namespace) -> list[str]:
    print(f"\nfleet bench: {args.models} models per worker; pulls of {args.pull_mb:g} MB at {args.rate_mbps:g} MB/s "
          f"per worker, {args.rounds} per size (medians; latencies sampled while the pull ran); "
          f"then a long pull ({args.stream_seconds:g} s of download) followed by {args.streams} job streams")
    table = {r.workers: rows(r) for r in results}
    sizes = [r.workers for r in results]
    head = f"{'':<32}" + "".join(f"{f'{w} wkrs':>12}" for w in sizes)
    if len(sizes) > 1:
        head += f"{f'growth {sizes[-1]}/{sizes[0]}':>16}"
    print(head + f"{'goal':>8}")
    missed = []
    for name in table[sizes[0]]:
        line = f"{name:<32}" + "".join(f"{table[w].get(name, math.nan):>12.1f}" for w in sizes)
        if len(sizes) > 1:
            first, last = table[sizes[0]].get(name, math.nan), table[sizes[-1]].get(name, math.nan)
            line += f"{last / first:>15.1f}x" if first else f"{'-':>16}"
        goal = GOALS.get(name)
        print(line + (f"{goal:>8g}" if goal is not None else ""))
        if goal is None:
            continue
        for w in sizes:
            value = table[w].get(name, math.nan)
            if (w == GOAL_SIZE or name in EVERY_SIZE) and not value <= goal:
                missed.append(f"{name}: {value:.1f} > {goal:g} at {w} workers")
    for r in results:
        print(f"\n{r.workers} workers ({r.pulling} pulling, {len(r.agent_stats)} agent processes, "
              f"{r.agent_cpu:.1f} CPU s): first GET /api/v1/models after registration {r.cold_models_ms:.0f} ms")
        for i, run in enumerate(r.pulls):
            top = sorted(run.writes_by_command.items(), key=lambda kv: -kv[1])[:6]
            print(f"  pull {i}: {run.state} in {run.seconds:.1f} s, POST {run.post_ms:.0f} ms, samples "
                  + ", ".join(f"{k.split()[-1]} {len(v)}" for k, v in run.samples.items())
                  + "; writes/s per worker by command: " + ", ".join(f"{c} {v:.2f}" for c, v in top))
            if run.state != jobstate.JOB_COMPLETED:
                missed.append(f"pull {i} at {r.workers} workers ended {run.state}")
        s = r.streams
        top = sorted(s.pull.writes_by_command.items(), key=lambda kv: -kv[1])[:6]
        print(f"  long pull: {s.pull.state} in {s.pull.seconds:.1f} s, POST {s.pull.post_ms:.0f} ms; {s.opened} of "
              f"{s.streams} streams opened before it ended; GET workers while streams were open: {len(s.workers_ms)} "
              f"samples ({min(s.open_during, default=0)}-{max(s.open_during, default=0)} open), max "
              f"{max(s.workers_ms, default=math.nan):.0f} ms; stream failures: {s.failures or 'none'}; "
              f"Redis cut {s.output_buffer_cuts} client(s) for their output buffer; "
              f"writes/s per worker by command: " + ", ".join(f"{c} {v:.2f}" for c, v in top))
        if s.opened < s.streams:
            missed.append(f"only {s.opened} of {s.streams} streams opened at {r.workers} workers")
        if s.pull.state != jobstate.JOB_COMPLETED:
            missed.append(f"the long pull at {r.workers} workers ended {s.pull.state}")
        agent_errors = [e for st in r.agent_stats for e in st.get("errors", [])]
        failed = sum(st.get("failed", 0) for st in r.agent_stats)
        print(f"  agents: {sum(st.get('pulls', 0) for st in r.agent_stats)} pulls done, {failed} failed"
              + (f"; errors: {agent_errors[:3]}" if agent_errors else ""))
        if agent_errors:
            missed.append(f"agent errors at {r.workers} workers: {agent_errors[:1]}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="pulls per size (medians)")
    parser.add_argument("--pull-mb", type=float, default=200.0, help="simulated model size, MB")
    parser.add_argument("--rate-mbps", type=float, default=100.0, help="simulated download speed per worker, MB/s")
    parser.add_argument("--streams", type=int, default=500, help="event streams on the streamed pull (0: none)")
    parser.add_argument("--stream-seconds", type=float, default=30.0, help="simulated download time of the long pull")
    parser.add_argument("--stream-timeout", type=float, default=240.0, help="longest wait for the long pull and its streams")
    parser.add_argument("--sample-interval", type=float, default=0.25, help="pause between two rounds of API samples")
    parser.add_argument("--pull-timeout", type=float, default=300.0, help="longest wait for one pull")
    parser.add_argument("--agent-processes", type=int, default=0, help=f"default: one per {AGENTS_PER_PROCESS} workers, at most {MAX_AGENT_PROCESSES}")
    parser.add_argument("--keep-logs", action="store_true", help="keep the controller's, Redis's and the agents' logs")
    parser.add_argument("--no-fail", action="store_true", help="report only; exit 0 even when a goal is missed")
    parser.add_argument("--replicas", type=int, default=0, help="placement bench instead (bench/fleet_placement.py): "
                        "--models pulls with this many replicas each over simulated worker records")
    parser.add_argument("--spread", default=None, help="with --replicas: the label the copies spread over (zone)")
    args = parser.parse_args()
    if args.replicas:
        return placement_main(args)
    root = Path(tempfile.mkdtemp(prefix="eldric-fleet-"))
    services: list[Service] = []
    missed: list[str] = []
    bench = None
    try:
        redis_server = RedisServer(root).start()
        services.append(redis_server)
        port = free_port()
        controller = Service("controller", eldric("controller", "--port", str(port)), root, cwd=REPO_ROOT,
                             env={"ELDRIC_REDIS_URL": redis_server.url, "ELDRIC_LOG_LEVEL": "WARNING"}).start()
        services.append(controller)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: session().get(f"{url}/healthz", timeout=2).ok, timeout=30,
                   message=f"controller on {url}\n{controller.log_tail()}")
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        bench = Bench(url, client, controller.proc.pid, args.pull_timeout, args.sample_interval, redis_server.log_path)
        results = []
        for w in sorted(args.workers):
            print(f"{w} workers ...", flush=True)
            results.append(run_size(bench, args, root, redis_server.url, port, w))
        missed = print_report(results, args)
    finally:
        if bench is not None:
            bench.watch.stop()
        for svc in reversed(services):
            svc.stop()
        if args.keep_logs:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for line in missed:
        print("MISSED", line)
    return 1 if missed and not args.no_fail else 0


def placement_main(args: argparse.Namespace) -> int:
    """`--replicas N`: the placement bench at each --workers size (a fresh Redis database per size)."""
    from bench.fleet_placement import report, run_placement, start_manifest_server
    from testbed.processes import LOOPBACK
    root = Path(tempfile.mkdtemp(prefix="eldric-placement-"))
    manifests = start_manifest_server()
    services: list[Service] = []
    missed: list[str] = []
    try:
        redis_server = RedisServer(root).start()
        services.append(redis_server)
        port = free_port()
        env = {"ELDRIC_REDIS_URL": redis_server.url, "ELDRIC_LOG_LEVEL": "WARNING", "ELDRIC_URL_ALLOWLIST": LOOPBACK,
               "ELDRIC_OLLAMA_REGISTRY": f"http://127.0.0.1:{manifests.server_address[1]}"}
        controller = Service("controller", eldric("controller", "--port", str(port)), root, cwd=REPO_ROOT,
                             env=env).start()
        services.append(controller)
        url = f"http://127.0.0.1:{port}"
        http = session()
        wait_until(lambda: http.get(f"{url}/healthz", timeout=2).ok, timeout=30,
                   message=f"controller on {url}\n{controller.log_tail()}")
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        for w in sorted(args.workers):
            client.flushdb()
            print(f"{w} workers ...", flush=True)
            result = run_placement(http, url, client, workers=w, models=args.models, replicas=args.replicas,
                                   spread=args.spread)
            missed += report(result, models=args.models, replicas=args.replicas, spread=args.spread)
    finally:
        manifests.shutdown()
        for svc in reversed(services):
            svc.stop()
        if args.keep_logs:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for line in missed:
        print("MISSED", line)
    return 1 if missed and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())
