"""Virtual worker agents for bench/fleet.py: many agents in one process, on the real contract, downloading nothing.

`python bench/fleet_agents.py --redis-url URL --first 0 --count 250 --models 100 --catalog plan.json
--rate-mbps 100 --root DIR` simulates the agents `w<first>` .. `w<first+count-1>` (bench/fleet.py runs a
few such processes). Against Redis each one does what `eldric worker` (worker_agent/main.py) does, with its own Redis
client (so its own connections), through the agent's own functions:

- at start it registers (`eldric.cluster.workers.register` with `main.worker_info`'s record) and publishes its
  inventory (`job_runner.refresh_inventory` -> `workers.publish_inventory`, records shaped like
  `OllamaStore.list_models`): workers are inference workers, every tenth a data worker (never given model
  work); four inference workers in five have all `--models` models, the rest miss about 5 % of them;
- it stays online with the agent's own `membership.Heartbeat` thread (AgentSettings `heartbeat_seconds`),
  the agents' first beats spread over one period;
- it consumes its direct queue `worker.<id>` (eldric.cluster.queues) with kombu: one broker connection per
  process and one Consumer per agent on it, each message acknowledged after its task ran (Celery's
  `task_acks_late`); `decode_task` reads the task name and arguments from the Celery message (protocol 2,
  or 1); at most AgentSettings `concurrency` tasks run per agent, the rest wait their turn;
- a `models.pull` runs through the agent's job runner (`worker_agent.job_runner._run_job`: the job checks,
  the per-job lease, `Progress` at AgentSettings' `progress_seconds` throttle, the final record, then the
  inventory with the model added), where `pull_model`'s download is replaced by `simulate_pull`: the same
  progress calls, around bytes that "arrive" at `--rate-mbps` (counted with `Progress.add_bytes` every
  `progress_seconds / 4`, as a download's chunks are). The model's size comes from the catalog (a JSON
  object model name -> bytes, standing in for the registry's manifests); a model not in it fails the
  worker's part as a real agent reports a failed task (`job_runner.report_failure` with
  `tasks.describe_failure`, as `JobTask.on_failure`). Other tasks are acknowledged and counted, not run.

Not simulated: Celery's own traffic of a real worker (one BRPOP connection per agent, task and worker
events, the remote-control mailbox) and the agent's HTTP server. The process prints `ready <count>` once
every agent is registered and consuming, and `stats {...}` (JSON) when SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import redis
from kombu import Connection, Consumer, Exchange, Queue

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eldric.cluster.jobs.progress import Progress
from eldric.cluster.queues import TASK_PULL, worker_queue
from eldric.cluster.redisconn import celery_broker
from eldric.core.errors import EldricError
from eldric.cluster import workers
from worker_agent import job_runner, main as agent_main, membership
from worker_agent.runtime import Agent
from worker_agent.settings import AgentSettings
from worker_agent.tasks import describe_failure

log = logging.getLogger("fleet-agents")
SOURCE = "https://registry.ollama.ai (simulated)"


def worker_id(index: int) -> str:
    return f"w{index:05d}"


def worker_type(index: int) -> str:
    return "data" if index % 10 == 9 else "inference"


def model_digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def model_record(name: str, now: float, size: int | None = None) -> dict:
    """An inventory record as `OllamaStore.list_models` writes it."""
    return {"name": name, "full_name": f"registry.ollama.ai/library/{name}", "digest": model_digest(name),
            "size": size if size is not None else 400_000_000 + len(name) * 1_000_003, "modified_at": now - 86400,
            "format": "gguf", "backend": "ollama",
            "details": {"format": "gguf", "family": "llama", "families": ["llama"], "parameter_size": "1B",
                        "quantization_level": "Q4_K_M", "parent_model": ""}}


def initial_models(index: int, models: int, now: float) -> list[dict]:
    """What worker `index` has at start: nothing on data workers; one inference worker in five misses a few."""
    if worker_type(index) != "inference":
        return []
    names = [f"model-{m:03d}:latest" for m in range(models)]
    rng = random.Random(index)
    have = names if index % 5 else [n for n in names if rng.random() > 0.05]
    return [model_record(n, now) for n in have]


def decode_task(headers: dict | None, body: object) -> tuple[str, list]:
    """(task name, positional arguments) of a Celery task message, already decoded from JSON.

    Protocol 2 (Celery's default): the name is the `task` header and the body is
    `[args, kwargs, embed]`. Protocol 1: the body is a mapping with `task` and `args`.
    """
    if headers and "task" in headers:
        if not isinstance(body, list | tuple) or len(body) != 3:
            raise ValueError(f"not a protocol 2 task body: {body!r:.200}")
        return str(headers["task"]), list(body[0])
    if isinstance(body, dict) and "task" in body:
        return str(body["task"]), list(body.get("args") or [])
    raise ValueError(f"not a Celery task message: headers {headers!r:.200}")


def simulate_pull(progress: Progress, model: str, size: int, rate: float, *, tick: float,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict:
    """`pull_model`'s progress calls (worker_agent/pulling.py) around a download of `size` bytes at `rate` B/s."""
    digest = model_digest(model)
    progress.update(force=True, status="pulling manifest", source=SOURCE)
    progress.start(total=size, source=SOURCE)
    progress.update(reused=0)
    progress.update(status=f"pulling {digest[7:19]}", layer=digest)
    received, started = 0, clock()
    while received < size:
        sleep(tick)
        arrived = min(size, int(rate * (clock() - started)))
        if arrived > received:
            progress.add_bytes(arrived - received)  # raises JobEndedError once the part was cancelled
            received = arrived
    progress.update(force=True, status="verifying sha256 digest", layer=None)
    progress.update(force=True, status="writing manifest")
    progress.finish(total=size, digest=digest, transferred=size)  # as pulling.pull_into_store
    return {"model": model, "digest": digest, "size": size, "downloaded": size}


class SimulatedStore:
    """What the job runner reads of an OllamaStore: the models (for the inventory) and the partial-download directory."""

    def __init__(self, models: list[dict], partial_dir: Path) -> None:
        self._models = {m["name"]: m for m in models}
        self.partial_dir = partial_dir
        self._lock = threading.Lock()

    def list_models(self) -> list[dict]:
        with self._lock:
            return list(self._models.values())

    def add(self, record: dict) -> None:
        with self._lock:
            self._models[record["name"]] = record


class NoCatalog:
    """The file-model catalog of a node that has no file models."""

    def inventory(self) -> list[dict]:
        return []


@dataclass
class Stats:
    pulls: int = 0
    failed: int = 0
    other_tasks: int = 0
    undecodable: int = 0
    most_running: int = 0
    errors: list[str] = field(default_factory=list)


class VirtualFleet:
    """The agents of this process: their pulls run in threads, their messages are acked by the consumer thread."""

    def __init__(self, agents: dict[str, Agent], catalog: dict[str, int], rate: float) -> None:
        self.agents, self.catalog, self.rate = agents, catalog, rate
        self.stats = Stats()
        self._lock = threading.Lock()
        self._running: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._finished: collections.deque = collections.deque()  # messages to ack (deque ops are thread-safe)

    def on_message(self, wid: str, body: object, message) -> None:
        """kombu callback (consumer thread)."""
        try:
            name, args = decode_task(message.headers, body)
        except ValueError as exc:
            log.error("%s: %s", wid, exc)
            self.stats.undecodable += 1
            message.ack()
            return
        if name != TASK_PULL:
            self.stats.other_tasks += 1
            message.ack()
            return
        with self._lock:
            self._waiting[wid].append((message, str(args[0]), str(args[1])))
        self._start_next(wid)

    def ack_finished(self) -> None:
        """Acknowledge the messages of tasks that ran (consumer thread: kombu channels are not thread-safe)."""
        while self._finished:
            self._finished.popleft().ack()

    def _start_next(self, wid: str) -> None:
        with self._lock:
            if not self._waiting[wid] or self._running[wid] >= self.agents[wid].settings.concurrency:
                return
            message, job_id, model = self._waiting[wid].popleft()
            self._running[wid] += 1
            self.stats.most_running = max(self.stats.most_running, sum(self._running.values()))
        threading.Thread(target=self._run, args=(wid, message, job_id, model), name=f"pull-{wid}", daemon=True).start()

    def _run(self, wid: str, message, job_id: str, model: str) -> None:
        agent = self.agents[wid]
        try:
            self.pull(agent, job_id, model)
            self.stats.pulls += 1
        except Exception as exc:  # the task failed: JobTask.on_failure reports it (a bug is shown as one)
            self.stats.failed += 1
            if not isinstance(exc, EldricError):
                self.stats.errors.append(f"{wid} {job_id}: {exc!r}")
                log.exception("%s: pull of job %s failed", wid, job_id)
            job_runner.report_failure(agent, job_id, describe_failure(exc))
        finally:
            self._finished.append(message)
            with self._lock:
                self._running[wid] -= 1
            self._start_next(wid)

    def pull(self, agent: Agent, job_id: str, model: str) -> dict:
        """`job_runner.run_pull_job` with the download simulated."""
        size = self.catalog.get(model)
        if size is None:
            raise ModelUnknownError(f"model {model} not found in the simulated registry")

        def work(progress: Progress) -> dict:
            result = simulate_pull(progress, model, size, self.rate, tick=agent.settings.progress_seconds / 4)
            agent.store.add(model_record(model, time.time(), size))  # the manifest is in place: listed from now on
            return result
        return job_runner._run_job(agent, job_id, work)


class ModelUnknownError(EldricError):
    """The model is not in the simulated registry's catalog."""


def build_agents(args: argparse.Namespace) -> dict[str, Agent]:
    """Each agent with its own Redis client (so its own connections), as `eldric worker` has."""
    base = AgentSettings.from_env(worker_id=worker_id(args.first), worker_type="inference",
                                  redis_url=args.redis_url, data_dir=args.root)
    partial_dir = Path(args.root) / "partials"
    partial_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    agents = {}
    for index in range(args.first, args.first + args.count):
        wid = worker_id(index)
        settings = base.model_copy(update={"worker_id": wid, "worker_type": worker_type(index),
                                           "data_dir": Path(args.root) / wid})
        store = SimulatedStore(initial_models(index, args.models, now), partial_dir)
        agents[wid] = Agent(settings=settings, redis=agent_main.redis_client(args.redis_url), store=store,
                            catalog=NoCatalog())
    return agents


def register_all(agents: dict[str, Agent], first: int, stop: threading.Event) -> list[membership.Heartbeat]:
    """Register every agent and publish its inventory; heartbeats start spread over one period."""
    infos = {}
    for offset, (wid, agent) in enumerate(agents.items()):
        index = first + offset
        Path(agent.settings.data_dir).mkdir(parents=True, exist_ok=True)
        address = f"http://10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}:{agent.settings.http_port}"
        infos[wid] = agent_main.worker_info(agent.settings, address)
        workers.register(agent.redis, infos[wid], ttl=agent.settings.heartbeat_seconds * 3)
        job_runner.refresh_inventory(agent)
    beats = []

    def start_beats() -> None:
        for wid, agent in agents.items():
            s = agent.settings
            beat = membership.Heartbeat(agent.redis, wid, Path(s.data_dir), s.heartbeat_seconds, info=infos[wid],
                                        on_reregister=lambda agent=agent: job_runner.refresh_inventory(agent))
            beat.start()
            beats.append(beat)
            if stop.wait(s.heartbeat_seconds / len(agents)):
                return
    threading.Thread(target=start_beats, name="start-heartbeats", daemon=True).start()
    return beats


def consume(fleet: VirtualFleet, redis_url: str, stop: threading.Event, on_ready: Callable[[], None]) -> None:
    """One connection, one Consumer per agent's direct queue (declared as Celery declares a missing queue)."""
    broker, options = celery_broker(redis_url)
    with Connection(broker, transport_options=options) as conn:
        channel = conn.default_channel
        consumers = []
        for wid in fleet.agents:
            name = worker_queue(wid)
            queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
            consumers.append(Consumer(channel, queues=[queue], callbacks=[partial(fleet.on_message, wid)],
                                      accept=["json"], no_ack=False))
        for consumer in consumers:
            consumer.consume()
        on_ready()
        while not stop.is_set():
            try:
                conn.drain_events(timeout=0.1)
            except TimeoutError:
                pass
            fleet.ack_finished()
        fleet.ack_finished()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--first", type=int, required=True, help="index of the first worker (ids w00000, w00001, ...)")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--models", type=int, default=100, help="models in each inference worker's inventory at start")
    parser.add_argument("--catalog", type=Path, required=True, help="JSON object: model name -> size in bytes")
    parser.add_argument("--rate-mbps", type=float, default=100.0, help="simulated download speed, MB/s")
    parser.add_argument("--root", type=Path, required=True, help="a directory for the agents' data dirs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    agents = build_agents(args)
    fleet = VirtualFleet(agents, json.loads(args.catalog.read_text()), args.rate_mbps * 1e6)
    beats = register_all(agents, args.first, stop)
    try:
        consume(fleet, args.redis_url, stop, lambda: print(f"ready {len(agents)}", flush=True))
    finally:
        for beat in beats:
            beat.stop()
        for wid, agent in agents.items():
            try:
                workers.go_offline(agent.redis, wid)
            except redis.RedisError:
                pass
        print("stats " + json.dumps(fleet.stats.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
