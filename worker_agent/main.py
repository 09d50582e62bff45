"""`eldric worker`: the agent's HTTP server, heartbeat and Celery consumer in one process."""

from __future__ import annotations

import logging
import json
import socket
from pathlib import Path
import time
from collections.abc import Callable

import redis

from eldric.cluster import workers
from eldric import logging_setup
from eldric.cluster import redisconn
from eldric.cluster.queues import TASK_FOR_JOB_KIND, TASK_PULL, is_model_serving, queues_for, worker_queue
from eldric.core.redaction import redact_url
from worker_agent import celery_app, eviction, gpus, http_process, installers, job_runner, loaded_models, membership, runtime
from worker_agent.catalog import Catalog
from worker_agent.ollama_store import OllamaStore
from worker_agent.runtime import Agent
from worker_agent.settings import AgentSettings

log = logging.getLogger("eldric.agent")


def wait_for_redis(client: redis.Redis, url: str, timeout: float = 30.0) -> None:
    """Redis may start a moment after us (Procfile, systemd); give up with its own message."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"eldric worker: Redis at {redact_url(url)} unreachable: {exc}") from None
            time.sleep(0.5)


def advertised_backends(settings: AgentSettings) -> list[str]:
    """The backends the node serves: none on a type that never takes model work (data, science, ...)."""
    return list(settings.backends) if is_model_serving(settings.worker_type) else []


def declared_backends(settings: AgentSettings) -> dict:
    """What the node tells the cluster about each backend it serves: its absolute directory and API address."""
    if not is_model_serving(settings.worker_type):
        return {}
    out = {"ollama-store": {"models_dir": str(Path(settings.models_dir).absolute())}}
    for name, config in installers.backend_configs(settings).items():
        out[name] = {"models_dir": str(Path(config.models_dir).absolute()) if config.models_dir else None,
                     "url": config.url}
    return out


def capacity_facts(settings: AgentSettings, gpu_probe=None) -> Callable[[], dict]:
    """What the agent writes about its capacity at registration and every heartbeat: its labels, the
    disk of its model store (where pulled models land) and its GPUs (`gpu_probe`, default a cached
    worker_agent.gpus reading)."""
    probe = gpu_probe or gpus.GpuProbe()
    return lambda: membership.capacity_facts(Path(settings.models_dir), settings.labels, probe)


def worker_info(settings: AgentSettings, address: str, facts: Callable[[], dict] | None = None) -> dict:
    """The worker's record in the cluster: who it is, where it keeps data, what it serves, its upstream,
    and its capacity facts (`facts`, default `capacity_facts(settings)`)."""
    return {"id": settings.worker_id, "type": settings.worker_type, "address": address,
            "backends": advertised_backends(settings),
            "data_dir": str(Path(settings.data_dir).absolute()), "hostname": socket.gethostname(),
            "upstream_registry": redact_url(settings.ollama_registry),
            "backend_details": json.dumps(declared_backends(settings)),
            **eviction.record_fields(settings, settings.models_dir),  # bytes used, for the disk bar
            **(facts or capacity_facts(settings))()}


def redis_client(url: str) -> redis.Redis:
    """The agent's own Redis client (state, heartbeat, progress). The timeouts turn a Redis that
    stopped answering into an error the callers retry, instead of a heartbeat or a download
    thread blocked on a dead socket for the kernel's TCP timeout (minutes)."""
    return redisconn.redis_client(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=5,
                                  health_check_interval=30)


def run_agent(settings: AgentSettings, loglevel: str = "INFO") -> int:
    """Run until the consumer stops; the exit status is Celery's (non-zero after an unrecoverable
    error, so a supervisor with `Restart=on-failure` starts the agent again)."""
    logging_setup.configure_logging(loglevel, logging_setup.format_from_env())
    client = redis_client(settings.redis_url)
    wait_for_redis(client, settings.redis_url)
    store = OllamaStore(settings.models_dir)
    store.ensure()
    agent = Agent(settings=settings, redis=client, store=store, catalog=Catalog(Path(settings.data_dir) / "catalog"))
    runtime.install(agent)

    server = http_process.start(settings.model_dump_json(), settings.host, settings.http_port)
    address = settings.advertise_url or f"http://{settings.host}:{server.server_port}"
    facts = capacity_facts(settings)
    info = worker_info(settings, address, facts)
    workers.register(client, info, ttl=settings.heartbeat_seconds * 3)
    heartbeat = membership.Heartbeat(client, settings.worker_id, settings.data_dir, settings.heartbeat_seconds,
                                     info=info, on_reregister=lambda: job_runner.refresh_inventory(agent),
                                     facts=facts)
    heartbeat.start()
    job_runner.refresh_inventory(agent)
    reporter = loaded_models.Reporter(agent)  # what the backends have loaded, for /api/ps and routing
    reporter.start()

    app = celery_app.configure(settings.redis_url)
    celery_app.stop_downloads_on_shutdown(agent.stopping)
    for job_id, meta in job_runner.unfinished_jobs(agent):
        log.info("resuming job %s (%s) after a restart", job_id, meta.get("model"))
        task = TASK_FOR_JOB_KIND.get(meta.get("kind", "pull"), TASK_PULL)
        app.send_task(task, args=[job_id, meta.get("model", "")], queue=worker_queue(settings.worker_id))

    if not settings.cluster_secret:
        log.warning("ELDRIC_CLUSTER_SECRET is empty: this agent serves its blobs and model list to anyone who "
                    "can reach %s; set the same secret on every agent, the controller and the registry", address)
    log.info("agent %s (%s) serving on %s, store %s", settings.worker_id, settings.worker_type, address, store.root)
    log.info("effective configuration: %s", settings.effective())
    try:
        worker = app.Worker(
            queues=queues_for(settings.worker_type, settings.worker_id),
            hostname=f"{settings.worker_id}@eldric", pool="threads", concurrency=settings.concurrency,
            loglevel=loglevel, without_gossip=True, without_mingle=True,
        )
        celery_app.quiet_cancel_warning()
        worker.start()
        if worker.exitcode:
            log.error("the Celery consumer stopped (exit status %s); exiting so the supervisor restarts the agent",
                      worker.exitcode)
        return int(worker.exitcode or 0)
    finally:
        heartbeat.stop()
        reporter.stop()
        try:
            workers.go_offline(client, settings.worker_id)
        except redis.RedisError:
            pass
        server.shutdown()
