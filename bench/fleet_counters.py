"""What bench/fleet.py reads while a pull runs: Redis's and the controller's counters, and each job's end."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from eldric.cluster import keys
from eldric.cluster.jobs import state as jobstate


@dataclass(frozen=True)
class Counters:
    at: float
    commands: int
    calls: dict[str, int]
    controller_cpu: float
    redis_cpu: float


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and its reaped children (utime, stime, cutime, cstime of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def read_counters(client: redis.Redis, controller_pid: int) -> Counters:
    pipe = client.pipeline(transaction=False)
    pipe.info("stats")
    pipe.info("commandstats")
    pipe.info("cpu")
    stats, cmdstats, cpu = pipe.execute()
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in cmdstats.items()}
    return Counters(time.time(), int(stats["total_commands_processed"]), calls, process_cpu(controller_pid),
                    float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))


def write_commands(client: redis.Redis, names: list[str]) -> set[str]:
    """The commands among `names` that Redis flags as writes (COMMAND INFO)."""
    info = client.command()
    return {n for n in names if "write" in (info.get(n) or info.get(n.split("|")[0]) or {}).get("flags", [])}



def output_buffer_cuts(redis_log: Path) -> int:
    try:
        return redis_log.read_text(errors="replace").count("overcoming of output buffer limits")
    except FileNotFoundError:
        return 0


class JobWatch:
    """Follows every job's event channel; notes the moment a job's final record is published, with the counters."""

    def __init__(self, client: redis.Redis, controller_pid: int) -> None:
        self.client, self.pid = client, controller_pid
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(keys.job_events("*"))
        self.finals: dict[str, tuple[str, Counters]] = {}
        self._cond = threading.Condition()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                message = self.pubsub.get_message(timeout=0.5)
            except redis.TimeoutError:
                continue  # a message cut by the read timeout on a loaded machine: redis-py reconnects and resubscribes
            except redis.ConnectionError:
                if self._stopped.is_set():
                    return
                raise
            if not message or '"job_state":"running"' in message["data"]:
                continue
            state = json.loads(message["data"]).get("job_state")
            if state in jobstate.JOB_FINAL:
                job_id = message["channel"].split(":")[2]
                counters = read_counters(self.client, self.pid)
                with self._cond:
                    self.finals.setdefault(job_id, (state, counters))
                    self._cond.notify_all()

    def final(self, job_id: str, timeout: float = 0) -> tuple[str, Counters] | None:
        with self._cond:
            self._cond.wait_for(lambda: job_id in self.finals, timeout)
            return self.finals.get(job_id)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self.pubsub.close()
