"""A full disk is an ordinary failure (issue 11, findings 3 and 7), on a 64 MiB tmpfs as a worker's store.

Before: the pull failed as "internal error … No space left on device" and left its partial behind;
after space was freed, the up-front check counted the whole blob instead of the missing bytes and
refused to resume; partials and lock files of failed jobs stayed forever.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from celery import Celery

from eldric.cluster.celeryconf import celery_config
from eldric.cluster.queues import MAINTENANCE_QUEUE, TASK_CLEAN_PARTIALS_ALL
from eldric.core.digests import Digest
from eldric.transfer.partials import resumable_bytes
from testbed.disks import MountError, small_tmpfs
from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import push_ollama_model
from testbed.processes import wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.integration

MB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 MiB tmpfs (we run as root in CI); skipped where mounting is not permitted."""
    try:
        with small_tmpfs(tmp_path / "disk", "64m") as disk:
            yield disk
    except MountError as exc:
        pytest.skip(f"a worker's disk: {exc}")


@pytest.fixture(scope="module")
def live(cluster):
    cluster.start_controller()
    return cluster


@pytest.fixture(scope="module")
def model(oci, workdir) -> dict:
    """A 40 MiB model: fits the 64 MiB disk, but not next to much else."""
    gguf = write_gguf_of_size(workdir / "disk40.gguf", 40 * MB, name="diskfill")
    pushed = push_ollama_model(oci.url, "library/diskfill", "latest", gguf_path=gguf)
    digest = Digest.parse(pushed["layers"]["application/vnd.ollama.image.model"])
    return {"digest": digest, "size": gguf.stat().st_size}


@pytest.fixture
def slow_upstream(oci):
    proxy = ThrottlingProxy(oci.url, bytes_per_second=8 * MB)
    yield proxy
    proxy.close()


def start_worker(live, name: str, disk: Path, upstream: str):
    return live.start_worker(name, "inference", ELDRIC_OLLAMA_REGISTRY=upstream, ELDRIC_OLLAMA_MODELS=str(disk / "models"),
                             ELDRIC_DOWNLOAD_PARTS="1", ELDRIC_PART_BYTES=str(4 * MB))


def record(live, job_id: str, worker: str) -> dict:
    job = live.api("GET", f"/api/v1/models/pull-jobs/{job_id}").json()
    return next(w for w in job["workers"] if w["worker"] == worker)


def fill(disk: Path, leave: int) -> Path:
    """Allocate a ballast file so that only `leave` bytes stay free on `disk`."""
    ballast = disk / f"ballast-{time.monotonic_ns()}"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, max(1, free - leave))
    finally:
        os.close(fd)
    return ballast


def leftovers(disk: Path) -> list[str]:
    partial = disk / "models" / ".eldric-partial"
    return sorted(p.name for p in partial.iterdir()) if partial.exists() else []


def test_a_disk_that_fills_mid_pull_fails_the_worker_with_the_reason_and_frees_the_partial(live, small_disk, model,
                                                                                          slow_upstream):
    start_worker(live, "filling", small_disk, slow_upstream.url)
    job = live.api("POST", "/api/v1/models/pull", json={"model": "diskfill", "workers": ["filling"]}).json()
    wait_until(lambda: record(live, job["id"], "filling")["completed"] > 12 * MB, timeout=30, interval=0.05,
               message="a third of the model")
    ballast = fill(small_disk, leave=0)  # someone else took the rest of the disk
    final = live.wait_job(job["id"], timeout=60)
    worker = final["workers"][0]
    assert worker["state"] == "failed", json.dumps(final, indent=1)
    assert re.fullmatch(rf"no space left on tmpfs \({re.escape(str(small_disk))}\) for {model['digest']}: "
                        r"needs 40\.\d MiB, has [\d.]+ (B|KiB|MiB)", worker["error"]), worker["error"]
    # The job failed for good, so its partial data is gone (no lock file either): the disk has room again.
    assert leftovers(small_disk) == []
    ballast.unlink()
    assert os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize > 60 * MB


def test_the_space_check_before_a_pull_says_what_is_needed_and_what_is_free(live, small_disk, model, oci):
    start_worker(live, "cramped-disk", small_disk, oci.url)
    fill(small_disk, leave=8 * MB)
    job = live.api("POST", "/api/v1/models/pull", json={"model": "diskfill", "workers": ["cramped-disk"]}).json()
    worker = live.wait_job(job["id"], timeout=30)["workers"][0]
    assert worker["state"] == "failed"
    assert re.fullmatch(rf"no space left on tmpfs \({re.escape(str(small_disk))}\) for diskfill:latest: "
                        r"needs 40\.\d MiB, has [78]\.\d MiB", worker["error"]), worker["error"]
    assert leftovers(small_disk) == []


def test_after_space_is_freed_a_pull_resumes_needing_only_the_missing_bytes(live, small_disk, model, slow_upstream):
    worker = start_worker(live, "resumer", small_disk, slow_upstream.url)
    job = live.api("POST", "/api/v1/models/pull", json={"model": "diskfill", "workers": ["resumer"]}).json()
    wait_until(lambda: record(live, job["id"], "resumer")["completed"] > 28 * MB, timeout=30, interval=0.05,
               message="seventy percent of the model")
    worker.kill()
    partial = small_disk / "models" / ".eldric-partial"
    have = resumable_bytes(partial, model["digest"], model["size"])
    missing = model["size"] - have
    assert have >= 16 * MB, have  # the resume state lags the data by up to a second
    # Room for what is missing (and the small layers), not for the whole blob again.
    fill(small_disk, leave=missing + 2 * MB)
    assert os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize < model["size"]

    start_worker(live, "resumer", small_disk, slow_upstream.url)
    final = live.wait_job(job["id"], timeout=60)
    assert final["state"] == "completed", json.dumps(final, indent=1)
    blob = small_disk / "models" / "blobs" / model["digest"].filename
    assert blob.stat().st_size == model["size"]
    assert leftovers(small_disk) == []


def test_the_maintenance_schedule_cleans_stale_partials_and_lock_files_on_every_worker(live, tmp_path):
    live.start_worker("janitor", "inference")
    partial = live.store("janitor") / ".eldric-partial"
    partial.mkdir(parents=True, exist_ok=True)
    stale, fresh = "sha256-" + "a" * 64, "sha256-" + "b" * 64
    for name in (stale, fresh):
        (partial / name).write_bytes(b"x" * 4096)
        (partial / f"{name}.json").write_text(json.dumps({"digest": "x", "size": 4096, "parts": [], "owner": None}))
    (partial / ("sha256-" + "c" * 64 + ".lock")).touch()
    two_days_ago = time.time() - 2 * 86400
    for path in (partial / stale, partial / f"{stale}.json", partial / ("sha256-" + "c" * 64 + ".lock")):
        os.utime(path, (two_days_ago, two_days_ago))

    producer = Celery("disk-test", set_as_current=False)
    producer.conf.update(celery_config(live.redis_server.url))
    producer.send_task(TASK_CLEAN_PARTIALS_ALL, args=[86400.0], queue=MAINTENANCE_QUEUE)  # what beat sends

    wait_until(lambda: not (partial / stale).exists(), timeout=30, message=f"the cleanup\n{live.logs()}")
    assert sorted(p.name for p in partial.iterdir()) == [fresh, f"{fresh}.json"]
