"""Time to enqueue one task per worker (eldric.cluster.dispatch.send_to_workers) against a real redis-server.

    python -m bench.enqueue [--workers 1000] [--rounds 3]

Starts a private redis-server on loopback and sends one pull message to each of W direct
queues the old way (one `send_task` round trip per worker) and the current way (one
connection, pipelined chunks). "new queues": the first send to those queues in this process
(kombu declares each queue once per process, about 6 Redis commands each, not pipelined);
"warm": later sends. Checks every queue holds its messages; prints medians and Redis commands.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import redis

from eldric.cluster.dispatch import RETRY_POLICY, create_producer, send_to_workers
from eldric.cluster.queues import TASK_PULL, worker_queue
from testbed.processes import RedisServer


def send_one_by_one(producer, task: str, job_id: str, args: list, worker_ids: list[str]) -> list[str]:
    """The previous dispatch: one send_task (one round trip) per worker."""
    for wid in worker_ids:
        producer.send_task(task, args=[job_id, *args], queue=worker_queue(wid), retry=True, retry_policy=RETRY_POLICY)
    return []


def measure(client: redis.Redis, url: str, send, workers: list[str], job_id: str) -> tuple[float, int]:
    client.config_resetstat()
    started = time.perf_counter()
    assert send(create_producer(url), TASK_PULL, job_id, ["tiny:latest"], workers) == []
    seconds = time.perf_counter() - started
    commands = sum(v["calls"] for k, v in client.info("commandstats").items() if "resetstat" not in k)
    return seconds, commands


def run(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            client = redis.Redis.from_url(server.url)
            for name, send in (("one by one", send_one_by_one), ("batched", send_to_workers)):
                workers = [f"{name[0]}-node-{i:04d}" for i in range(n)]
                cold, cold_cmds = measure(client, server.url, send, workers, "job-cold")
                warm = [measure(client, server.url, send, workers, f"job-{r}") for r in range(rounds)]
                assert all(client.llen(worker_queue(w)) == rounds + 1 for w in workers[:: max(1, n // 50)])
                print(f"{name:>10}: {n} messages: new queues {cold * 1000:.0f} ms ({cold_cmds} Redis commands), "
                      f"warm median {statistics.median(s for s, _ in warm) * 1000:.0f} ms ({warm[0][1]} commands)")
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    run(a.workers, a.rounds)


if __name__ == "__main__":
    main()
