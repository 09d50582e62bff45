"""GC end to end (issue 25): one real agent holding a pulled model, an orphaned blob written into its store.

`eldric gc --dry-run` lists the orphan (and nothing the model references); `eldric gc` has the agent sweep
with removal (ELDRIC_GC_GRACE_SECONDS=0): the orphan goes, the model's blobs stay, /metrics counts the bytes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from eldric.core.digests import Digest
from testbed.processes import wait_until

pytestmark = pytest.mark.integration

ORPHAN = b"bytes no manifest, catalog entry or backend file references" * 300


@pytest.fixture(scope="module")
def live(cluster, tiny_model):
    cluster.start_controller()
    cluster.start_worker("gc-a", ELDRIC_GC_GRACE_SECONDS="0")
    job = cluster.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["gc-a"]}).json()
    assert cluster.wait_job(job["id"])["state"] == "completed", cluster.logs()
    return cluster


def cli(live, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELDRIC_")}
    return subprocess.run([sys.executable, "-m", "eldric.cli", *args, "--controller", live.controller_url],
                          capture_output=True, text=True, timeout=90, env=env)


def test_a_sweep_removes_the_orphaned_blob_and_keeps_the_models(live):
    blobs = live.store("gc-a") / "blobs"
    kept = sorted(p.name for p in blobs.glob("sha256-*"))
    assert kept, "the pull left its blobs"
    orphan = Digest.of_bytes(ORPHAN)
    (blobs / orphan.filename).write_bytes(ORPHAN)

    # A look without removal first (the dry run lists what the last sweep found).
    before = live.api("GET", "/api/v1/gc").json()["workers"][0].get("swept_at")
    assert live.api("POST", "/api/v1/gc", json={"remove": False}).status_code == 202
    wait_until(lambda: live.api("GET", "/api/v1/gc").json()["workers"][0].get("swept_at") != before, timeout=30,
               interval=0.2, message=f"gc-a's sweep\n{live.logs()}")
    finds = live.api("GET", "/api/v1/gc").json()["workers"][0]["finds"]
    assert [(f["kind"], f["digest"], f["bytes"]) for f in finds] == [("blob", str(orphan), len(ORPHAN))]
    assert finds[0]["removable_at"] == finds[0]["first_seen"]  # grace 0
    dry = cli(live, "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert str(orphan) in dry.stdout and "1 find(s)" in dry.stdout and "blob" in dry.stdout, dry.stdout
    assert (blobs / orphan.filename).exists()  # the dry run removed nothing

    swept = cli(live, "gc", "--json")
    assert swept.returncode == 0, swept.stderr + live.logs()
    report = json.loads(swept.stdout)
    assert report["asked"] == ["gc-a"] and report["workers"][0]["removed_bytes"] == len(ORPHAN)
    assert report["workers"][0]["finds"] == []
    assert not (blobs / orphan.filename).exists()
    assert sorted(p.name for p in blobs.glob("sha256-*")) == kept  # every referenced blob stays
    models = live.api("GET", "/api/v1/workers/gc-a/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny:latest"]

    metrics = live.http.get(f"{live.controller_url}/metrics", timeout=10).text
    assert re.search(rf'^eldric_gc_bytes_total\{{worker="gc-a"\}} {len(ORPHAN)}\.0$', metrics, re.M), metrics
