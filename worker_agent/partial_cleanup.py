"""This node's partial downloads: those of jobs that ended, and those nobody touched for a day, are deleted.

Beat asks every online worker (eldric/cluster/maintenance.request_partial_cleanup); a task that
fails for good deletes its own job's partials at once (`discard_job_partials`). A job that ended
while this worker was away, and that a catch-up will bring here again (eldric/cluster/jobs/catchups.py),
keeps its partials: the catch-up resumes them. Whatever is deleted is taken off the swarm boards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import redis

from eldric.cluster.jobs.catchups import replayed_jobs
from eldric.cluster.jobs.reads import part_state
from eldric.cluster.jobs.state import is_terminal
from eldric.transfer.diskspace import format_size
from eldric.transfer.partials import Cleaned
from eldric.transfer.partials import clean_partials as clean_partial_dir
from worker_agent.fanout import leave_swarms
from worker_agent.ollama_store import OllamaStore

log = logging.getLogger(__name__)


def clean_partials(client: redis.Redis, worker_id: str, store: OllamaStore, *, max_age: float) -> Cleaned:
    """Delete this node's partial downloads of jobs that ended, and what nobody touched for `max_age` seconds.

    A download in progress holds its lock and stays; so does one whose job may still retry it, and one
    whose job a catch-up of this worker replays (it resumes the partial).
    """
    cleaned = clean_partial_dir(store.partial_dir, max_age=max_age, is_finished=job_ended_check(client, worker_id),
                                incoming_dirs=(store.blobs.root,))
    if cleaned.removed:
        log.info("deleted %d partial downloads (%s): %s", len(cleaned.removed), format_size(cleaned.freed),
                 ", ".join(cleaned.removed))
        if cleaned.digests:
            leave_swarms(client, worker_id, store.blobs, cleaned.digests)
    return cleaned


def job_ended_check(client: redis.Redis, worker_id: str) -> Callable[[str], bool]:
    """Whether a partial's job is over for this worker: its part ended (or is unknown) and no catch-up replays it."""
    replayed = replayed_jobs(client, worker_id)

    def job_ended(job_id: str) -> bool:
        state = part_state(client, job_id, worker_id)
        return (state is None or is_terminal(state)) and job_id not in replayed
    return job_ended


def discard_job_partials(client: redis.Redis, worker_id: str, store: OllamaStore, job_id: str) -> Cleaned:
    """Delete the partial downloads job `job_id` left behind (a task's final failure, a cancel), off the boards too."""
    cleaned = clean_partial_dir(store.partial_dir, max_age=math.inf, is_finished=lambda owner: owner == job_id)
    if cleaned.digests:
        leave_swarms(client, worker_id, store.blobs, cleaned.digests)
    return cleaned
