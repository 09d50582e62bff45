"""The job-state rule is written once (eldric/cluster/jobs/state.py): the state a reader derives from the
records and the state an event carries after a write (from the counts the write path keeps) always agree."""

from __future__ import annotations

import json
import math
import random

import fakeredis
import pytest

from eldric.cluster import keys
from eldric.cluster.jobs import state as jobstate
from eldric.cluster.jobs.reads import get_job
from eldric.cluster.jobs.store import create_job, job_state_of_counts, published, write_record

STORED_STATES = [s for s in jobstate.WORKER_STATES if s != jobstate.OFFLINE]  # offline is only ever derived


@pytest.fixture
def client():
    return fakeredis.FakeRedis(decode_responses=True)


def test_every_sequence_of_writes_publishes_the_state_readers_derive(client):
    rng = random.Random(20)
    for trial in range(200):
        targets = [f"w{i}" for i in range(rng.randint(1, 4))]
        job_id = create_job(client, kind="pull", model="m:latest", targets=targets, source="ollama",
                            deadline_seconds=600, now=1000.0)
        events = client.pubsub(ignore_subscribe_messages=True)
        events.subscribe(keys.job_events(job_id))
        events.get_message(timeout=0.01)
        for step in range(rng.randint(1, 8)):
            wid = rng.choice(targets)
            state = rng.choice(STORED_STATES)
            record = {**jobstate.new_record(1000.0 + step), "state": state,
                      "started_at": 1000.0 if state not in (jobstate.PENDING, jobstate.SKIPPED) else None,
                      "finished_at": 1000.0 + step if jobstate.is_terminal(state) else None}
            if not write_record(client, job_id, wid, record).accepted:
                continue
            message = events.get_message(timeout=0.1)
            assert message is not None, (trial, step)
            event = published(json.loads(message["data"]))
            view = get_job(client, job_id, stale_after=math.inf, now=1001.0)
            assert event["job_state"] == view["state"], (trial, step, view)
            assert event["job_final"] is view["final"]
            assert event["job_final"] is jobstate.is_final_job(event["job_state"])
            assert event["final"] is jobstate.is_terminal(state)
        events.close()


@pytest.mark.parametrize("counts, expected", [
    ({"pending": "2"}, jobstate.JOB_PENDING),
    ({"pending": "1", "skipped": "1"}, jobstate.JOB_PENDING),
    ({"pending": "1", "skipped": "1", "+started": "1"}, jobstate.JOB_RUNNING),  # never pending again once started
    ({"pending": "0", "pulling": "1"}, jobstate.JOB_RUNNING),
    ({"completed": "1", "skipped": "1"}, jobstate.JOB_COMPLETED_WITH_SKIPPED),
    ({"completed": "1", "failed": "1", "cancelled": "1"}, jobstate.JOB_CANCELLED),
    ({"completed": "2", "pending": "0"}, jobstate.JOB_COMPLETED),
])
def test_the_counts_the_write_path_keeps_give_the_rules_state(counts, expected):
    assert job_state_of_counts(counts) == expected
