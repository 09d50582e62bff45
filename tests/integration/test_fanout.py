"""Peer-assisted fan-out (issue 14) over real processes: Redis, docker-registry behind a shared, byte-counting
uplink (testbed/uplink.py), a controller and inference agents.

Each test pulls its own model (a digest of its own, so no swarm board of an earlier test is in play)
and stops or kills the agents it started. Models are 24-32 MiB: several 4 MiB ranges
(eldric/transfer/swarm.py range_bytes_for), a few seconds at the uplink rates used here.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest

from eldric.cluster import keys
from eldric.transfer.swarm import range_bytes_for
from tests.integration.conftest import REPO_ROOT, Cluster
from testbed.gguf_models import write_gguf_of_size
from testbed.oci_registry import blob_data_path, push_ollama_model
from testbed.processes import Service, eldric, wait_until
from testbed.uplink import CHUNK, SharedBucket, UplinkProxy

pytestmark = pytest.mark.integration

MIB = 1 << 20
MT_MODEL = "application/vnd.ollama.image.model"
SEND_BUFFER = 64 << 10
FINAL = ("completed", "completed_with_skipped", "failed", "cancelled")


class TimedUplink(UplinkProxy):
    """The shared uplink, also logging when each body chunk went out (for rate measurements), rate adjustable."""

    def __init__(self, upstream: str, bytes_per_second: float) -> None:
        super().__init__(upstream, bytes_per_second)
        # Accepted connections inherit this: a write returns once the receiver's kernel has the bytes,
        # so what is counted as sent is what crossed the "link", not what waits in our own send buffer.
        self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.sent: list[tuple[float, str, int]] = []  # (monotonic time, path, bytes)

    def set_rate(self, bytes_per_second: float) -> None:
        self.bucket = SharedBucket(bytes_per_second)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.sent.clear()

    def _count(self, path: str, n: int) -> None:
        now = time.monotonic()
        super()._count(path, n)
        with self._lock:
            self.sent.append((now, path, n))

    def chunks(self, path: str) -> list[tuple[float, int]]:
        with self._lock:
            return [(t, n) for t, p, n in self.sent if p == path]


class Model:
    def __init__(self, name: str, pushed: dict, oci_root: Path) -> None:
        self.name, self.pushed, self.oci_root = name, pushed, oci_root
        manifest = pushed["manifest"]
        self.blobs = [manifest["config"], *manifest["layers"]]
        self.size = sum(b["size"] for b in self.blobs)
        self.digest = pushed["layers"][MT_MODEL]
        self.blob_size = next(b["size"] for b in manifest["layers"] if b["digest"] == self.digest)
        self.range_bytes = range_bytes_for(self.blob_size)
        self.ranges = -(-self.blob_size // self.range_bytes)

    @property
    def uplink_path(self) -> str:
        return f"/v2/library/{self.name}/blobs/{self.digest}"

    def upstream_bytes(self, digest: str) -> bytes:
        return blob_data_path(self.oci_root, digest).read_bytes()


@pytest.fixture(scope="module")
def uplink(oci):
    with TimedUplink(oci.url, 16 * MIB) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def make_model(oci, workdir):
    def make(name: str, mib: int) -> Model:
        gguf = write_gguf_of_size(workdir / f"{name}.gguf", mib * MIB, name=name)
        pushed = push_ollama_model(oci.url, f"library/{name}", "latest", gguf_path=gguf)
        gguf.unlink()
        return Model(name, pushed, oci.root)
    return make


@pytest.fixture(scope="module")
def fan(workdir, redis_server, oci, uplink):
    c = FanoutCluster(workdir, redis_server, oci, uplink)
    c.start_controller()
    yield c
    c.stop()


class FanoutCluster(Cluster):
    def __init__(self, root, redis_server, oci, uplink: TimedUplink) -> None:
        super().__init__(root, redis_server, oci)
        self.uplink = uplink

    def start_workers(self, names: list[str], **env: str) -> list[Service]:
        """Start the agents together (start-up dominates on 2 cores), then wait until all are registered."""
        host = self.uplink.url.removeprefix("http://")
        started = []
        for name in names:
            data_dir = self.root / "nodes" / name
            svc = Service(f"worker-{name}", eldric("worker", "--type", "inference", "--name", name, "--port", "0",
                                                  "--data-dir", str(data_dir), "--loglevel", "INFO"),
                          self.root, env=self.env(ELDRIC_OLLAMA_REGISTRY=self.uplink.url,
                                                  ELDRIC_INSECURE_REGISTRIES=host, **env),
                          cwd=REPO_ROOT).start()
            self.services.append(svc)
            self.workers[name] = svc
            started.append(svc)
        wait_until(lambda: all(self.redis.exists(f"eldric:worker:{n}:alive") for n in names), timeout=60,
                   message=f"workers {names} to register\n{self.logs()}")
        return started

    def stop_workers(self, names: list[str]) -> None:
        for name in names:
            self.workers[name].stop()

    def pull(self, model: Model, workers: list[str], **options) -> str:
        resp = self.api("POST", "/api/v1/models/pull", json={"model": model.name, "workers": workers, **options})
        assert resp.status_code == 202, resp.text
        return resp.json()["id"]

    def job(self, job_id: str) -> dict:
        return self.api("GET", f"/api/v1/models/pull-jobs/{job_id}").json()

    def record(self, job_id: str, worker: str) -> dict:
        return next(w for w in self.job(job_id)["workers"] if w["worker"] == worker)

    def wait_workers(self, job_id: str, workers: list[str], timeout: float = 60.0) -> dict:
        """Until those workers' records are final (the job itself may wait on a killed worker)."""
        def done():
            job = self.job(job_id)
            states = {w["worker"]: w["state"] for w in job["workers"]}
            return job if all(states.get(w) in FINAL for w in workers) else None
        return wait_until(done, timeout=timeout, interval=0.1, message=f"job {job_id} on {workers}\n{self.logs()}")

    def blob_file(self, worker: str, digest: str) -> Path:
        return self.store(worker) / "blobs" / digest.replace(":", "-")

    def assert_model_intact(self, worker: str, model: Model) -> None:
        """The manifest and every blob on the worker's disk are upstream's bytes; no partial data is left."""
        store = self.store(worker)
        manifest = store / "manifests" / "registry.ollama.ai" / "library" / model.name / "latest"
        assert manifest.read_bytes() == model.pushed["manifest_bytes"], worker
        for blob in model.blobs:
            data = self.blob_file(worker, blob["digest"]).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"], f"{worker}: {blob['digest']}"
            assert data == model.upstream_bytes(blob["digest"])
        assert not list((store / ".eldric-partial").glob("sha256-*")), f"{worker}: partial data left"

    def swarm_hash(self, digest: str, part: str) -> dict[str, str]:
        return self.redis.hgetall(keys.swarm(digest, part))


def live_holders(entries: dict[str, str]) -> dict[str, str]:
    """Entries of a swarm `leases`/`fetchers` hash whose expiry (Redis ms) is still ahead: key -> worker."""
    now_ms = time.time() * 1000
    out = {}
    for key, value in entries.items():
        who, expiry = value.split()
        if int(expiry) > now_ms:
            out[key] = who
    return out


def test_four_workers_take_one_copy_from_upstream_and_the_rest_from_each_other(fan, make_model):
    model = make_model("fan4", 32)
    names = ["f1", "f2", "f3", "f4"]
    fan.start_workers(names)
    try:
        fan.uplink.set_rate(16 * MIB)
        fan.uplink.reset()
        job = fan.wait_job(fan.pull(model, names), timeout=90)
    finally:
        fan.stop_workers(names)

    assert job["state"] == "completed", json.dumps(job, indent=1)
    for name in names:
        fan.assert_model_intact(name, model)

    blob_up = fan.uplink.bytes_by_path().get(model.uplink_path, 0)
    assert model.blob_size <= blob_up <= 1.05 * model.blob_size, (blob_up, model.blob_size)

    summary = job["summary"]
    assert summary["upstream_bytes"] == pytest.approx(model.size, rel=0.05), summary
    assert summary["peer_bytes"] == pytest.approx(3 * model.size, rel=0.05), summary
    assert summary["upstream_bytes"] + summary["peer_bytes"] == 4 * model.size, summary
    with_peers = 0
    for rec in job["workers"]:
        me = rec["worker"]
        assert rec["upstream_bytes"] + rec["peer_bytes"] == model.size, rec
        peers = rec.get("peers") or {}
        assert set(peers) <= set(names) - {me}, rec
        assert sum(peers.values()) == rec["peer_bytes"], rec
        assert not rec.get("bad_peers"), rec
        with_peers += bool(peers)
    assert with_peers >= 3, job["workers"]


def test_a_peer_killed_mid_transfer_costs_a_retry_not_the_pull(fan, make_model):
    model = make_model("fankill", 24)
    fan.start_workers(["ka"], ELDRIC_MAX_PEER_UPLOAD_RATE="4M")  # slow enough to be killed mid-range
    fan.start_workers(["kb", "kc"])
    try:
        fan.uplink.set_rate(32 * MIB)
        first = fan.wait_job(fan.pull(model, ["ka"]), timeout=60)
        assert first["state"] == "completed", json.dumps(first, indent=1)

        fan.uplink.reset()
        job_id = fan.pull(model, ["kb", "kc"], max_upstream_workers=1)

        def took_a_range_from_ka_and_receive_more():
            """kb or kc holds a range (verified, so from ka: nothing came from upstream), and ka is sending more."""
            holders = fan.swarm_hash(model.digest, "holders").values()
            held = sum(1 for h in holders if {"kb", "kc"} & set(h.split()))
            if not held or held >= model.ranges - 1:
                return False
            recs = {w["worker"]: w for w in fan.job(job_id)["workers"]}
            return all(recs[w]["state"] == "pulling" for w in ("kb", "kc"))
        wait_until(took_a_range_from_ka_and_receive_more, timeout=30, interval=0.02,
                   message=f"kb/kc to receive from ka\n{fan.logs()}")
        fan.workers["ka"].kill()
        job = fan.wait_workers(job_id, ["kb", "kc"], timeout=60)
    finally:
        fan.stop_workers(["ka", "kb", "kc"])

    states = {w["worker"]: w["state"] for w in job["workers"]}
    assert states == {"kb": "completed", "kc": "completed"}, json.dumps(job, indent=1)
    for name in ("kb", "kc"):
        fan.assert_model_intact(name, model)
    recs = {w["worker"]: w for w in job["workers"]}
    from_ka = sum(recs[w]["peers"].get("ka", 0) for w in ("kb", "kc"))
    assert model.range_bytes <= from_ka < 2 * model.blob_size, json.dumps(job, indent=1)
    assert all(recs[w]["upstream_bytes"] + recs[w]["peer_bytes"] == model.size for w in ("kb", "kc")), recs
    # What ka had not delivered came from upstream once (the ranges cut short included), not once per worker.
    blob_up = fan.uplink.bytes_by_path().get(model.uplink_path, 0)
    assert 0 < blob_up <= model.blob_size - model.range_bytes, blob_up


def test_a_peer_serving_a_flipped_byte_is_dropped_and_nothing_corrupt_is_stored(fan, make_model):
    model = make_model("fanflip", 24)
    fan.start_workers(["xa", "xb"])
    try:
        fan.uplink.set_rate(32 * MIB)
        first = fan.wait_job(fan.pull(model, ["xa"]), timeout=60)
        assert first["state"] == "completed", json.dumps(first, indent=1)
        bad_file = fan.blob_file("xa", model.digest)
        middle = model.blob_size // 2
        with open(bad_file, "r+b") as f:
            f.seek(middle)
            good = f.read(1)[0]
            f.seek(middle)
            f.write(bytes([good ^ 0xFF]))

        fan.uplink.reset()
        job = fan.wait_job(fan.pull(model, ["xb"]), timeout=60)
    finally:
        fan.stop_workers(["xa", "xb"])

    assert job["state"] == "completed", json.dumps(job, indent=1)
    fan.assert_model_intact("xb", model)
    rec = job["workers"][0]
    assert "xa" in (rec.get("bad_peers") or {}), rec
    assert "sha256" in rec["bad_peers"]["xa"], rec
    with open(fan.blob_file("xb", model.digest), "rb") as f:
        f.seek(middle)
        assert f.read(1)[0] == good
    assert bad_file.read_bytes() != fan.blob_file("xb", model.digest).read_bytes()
    # The bad range (at least) was fetched again from upstream.
    assert fan.uplink.bytes_by_path().get(model.uplink_path, 0) >= model.range_bytes
    assert rec["upstream_bytes"] + rec["peer_bytes"] == model.size, rec


def test_a_workers_download_cap_sets_its_download_time(fan, make_model):
    model = make_model("fancap", 32)
    cap = 4 * MIB
    fan.start_workers(["ca"], ELDRIC_MAX_DOWNLOAD_RATE="4M")
    try:
        fan.uplink.set_rate(256 * MIB)
        fan.uplink.reset()
        job = fan.wait_job(fan.pull(model, ["ca"]), timeout=60)
    finally:
        fan.stop_workers(["ca"])

    assert job["state"] == "completed", json.dumps(job, indent=1)
    fan.assert_model_intact("ca", model)
    rec = job["workers"][0]
    seconds = rec["finished_at"] - rec["started_at"]
    burst = 0.1 * cap  # eldric.transfer.ratelimit.TokenBucket: a fresh bucket holds a tenth of a second
    rate = (model.size - burst) / seconds
    # Never over the cap; a little under it is the pull's own steps (manifest, verify, install) in the time.
    assert 0.9 * cap <= rate <= 1.05 * cap, f"{rate / MIB:.2f} MiB/s over {seconds:.2f} s"


def test_a_jobs_upstream_rate_cap_holds_at_the_uplink(fan, make_model):
    model = make_model("fanrate", 72)  # 12 s at the cap: the promise is about any 10 s window
    cap = 6 * MIB
    names = ["ra", "rb", "rc"]
    fan.start_workers(names)
    try:
        fan.uplink.set_rate(256 * MIB)
        fan.uplink.reset()
        # Counted per 64 KiB write: with 1 MiB writes a window's edge misjudges up to 1 MiB per connection.
        fan.uplink.chunk = 64 << 10
        job = fan.wait_job(fan.pull(model, names, max_upstream_rate="6M"), timeout=90)
    finally:
        fan.uplink.chunk = CHUNK
        fan.stop_workers(names)

    assert job["state"] == "completed", json.dumps(job, indent=1)
    assert job["options"].get("max_upstream_rate") == cap, job["options"]
    for name in names:
        fan.assert_model_intact(name, model)
    # As the workers count it: the cluster's upstream bytes over the pull (less the shared bucket's tenth of a second).
    span = max(w["finished_at"] for w in job["workers"]) - min(w["started_at"] for w in job["workers"])
    counted = (job["summary"]["upstream_bytes"] - 0.1 * cap) / span
    assert 0.85 * cap <= counted <= 1.05 * cap, f"{counted / MIB:.2f} MiB/s over {span:.2f} s"
    # As the uplink carries it: the bytes of the model blob in every 10 s window, and over the whole transfer.
    chunks = fan.uplink.chunks(model.uplink_path)
    sent = sum(n for _, n in chunks)
    assert sent <= 1.05 * model.blob_size
    took = {w["worker"]: round(w["finished_at"] - w["started_at"], 2) for w in job["workers"]}
    window, most, first, in_window = 10.0, 0, 0, 0
    for at, n in chunks:
        in_window += n
        while chunks[first][0] < at - window:
            in_window -= chunks[first][1]
            first += 1
        most = max(most, in_window)
    assert chunks[-1][0] - chunks[0][0] >= window, "the transfer must last a whole window"
    assert most <= 1.05 * cap * window, (f"{most / window / MIB:.2f} MiB/s in the busiest 10 s at the uplink; "
                                         f"the workers took {took} s")
    rate = (sent - chunks[0][1]) / (chunks[-1][0] - chunks[0][0])
    assert 0.85 * cap <= rate <= 1.05 * cap, f"{rate / MIB:.2f} MiB/s at the uplink over the transfer; took {took} s"


def test_a_worker_dying_with_upstream_leases_is_taken_over_after_the_lease(fan, make_model):
    model = make_model("fanlease", 32)
    names = ["la", "lb"]
    fan.start_workers(names, ELDRIC_STALL_SECONDS="3")  # lease = max(stall, 10) s
    try:
        fan.uplink.set_rate(8 * MIB)
        fan.uplink.reset()
        job_id = fan.pull(model, names, max_upstream_workers=1)

        def fetcher_mid_download():
            fetchers = live_holders(fan.swarm_hash(model.digest, "fetchers"))
            assert len(fetchers) <= 1, fetchers  # max_upstream_workers=1
            leases = live_holders(fan.swarm_hash(model.digest, "leases"))
            done = len(fan.swarm_hash(model.digest, "sha"))
            if len(fetchers) == 1 and leases and 2 <= done <= model.ranges - 3:
                return next(iter(fetchers.values()))
            return None
        victim = wait_until(fetcher_mid_download, timeout=30, interval=0.02,
                            message=f"an upstream fetcher mid-download\n{fan.logs()}")
        fan.workers[victim].kill()
        killed_at = time.monotonic()
        # What the kill may cost: the victim's ranges in flight, and those only it held (fetched, not yet passed on).
        leased = [r for r, who in live_holders(fan.swarm_hash(model.digest, "leases")).items() if who == victim]
        only_victim = [r for r, who in fan.swarm_hash(model.digest, "holders").items() if who.split() == [victim]]
        survivor = next(n for n in names if n != victim)
        job = fan.wait_workers(job_id, [survivor], timeout=60)
        took = time.monotonic() - killed_at
    finally:
        fan.stop_workers(names)

    rec = next(w for w in job["workers"] if w["worker"] == survivor)
    assert rec["state"] == "completed", json.dumps(job, indent=1)
    fan.assert_model_intact(survivor, model)
    assert rec["upstream_bytes"] > 0, rec  # it took the upstream ranges over
    assert took >= 5, f"{survivor} finished {took:.1f} s after the kill: before the victim's lease could lapse?"
    blob_up = fan.uplink.bytes_by_path().get(model.uplink_path, 0)
    lost = len(leased) + len(only_victim)
    assert blob_up <= model.blob_size + lost * model.range_bytes, (blob_up, leased, only_victim)


# --- Issue 22, finding 2: the swarm board matches reality after a delete, a cancel, a hand-deleted blob ----

@pytest.fixture(scope="module")
def trio(fan):
    """Three agents the issue-22 tests share (each test has a model of its own, so no board of another is in play)."""
    names = ["r1", "r2", "r3"]
    fan.start_workers(names)
    yield names
    fan.stop_workers(names)


def held_by(fan, model: Model, names: list[str]) -> dict[str, int]:
    """How many of the model blob's ranges the board lists each of `names` as holding."""
    holders = fan.swarm_hash(model.digest, "holders").values()
    return {n: sum(1 for h in holders if n in h.split()) for n in names if any(n in h.split() for h in holders)}


def test_a_pull_after_a_delete_takes_the_model_from_upstream_once(fan, make_model, trio):
    model = make_model("fanredo", 24)
    fan.uplink.set_rate(32 * MIB)
    first = fan.wait_job(fan.pull(model, trio), timeout=60)
    assert first["state"] == "completed", json.dumps(first, indent=1)
    resp = fan.api("POST", "/api/v1/models/delete", json={"model": model.name, "workers": trio})
    assert resp.status_code == 202, resp.text
    deleted = fan.wait_job(resp.json()["id"], timeout=30)
    assert deleted["state"] == "completed", json.dumps(deleted, indent=1)
    assert not any(fan.blob_file(n, model.digest).exists() for n in trio)
    listed_after_delete = held_by(fan, model, trio)

    fan.uplink.reset()
    again = fan.wait_job(fan.pull(model, trio), timeout=60)

    assert again["state"] == "completed", json.dumps(again, indent=1)
    blob_up = fan.uplink.bytes_by_path().get(model.uplink_path, 0)
    ratio = blob_up / model.blob_size
    assert listed_after_delete == {} and ratio <= 1.05, \
        f"after the delete the board listed {listed_after_delete}; the second pull took {ratio:.2f} x the blob upstream"
    assert again["summary"]["upstream_bytes"] == pytest.approx(model.size, rel=0.05), again["summary"]
    for name in trio:
        fan.assert_model_intact(name, model)


def test_a_pull_after_a_cancel_takes_the_model_from_upstream_once(fan, make_model, trio):
    model = make_model("fancancel", 24)
    names = trio[:2]
    fan.uplink.set_rate(4 * MIB)
    job_id = fan.pull(model, names)
    wait_until(lambda: sum(held_by(fan, model, names).values()) >= 3, timeout=30, interval=0.05,
               message=f"a few ranges held\n{fan.logs()}")
    assert fan.api("POST", f"/api/v1/models/pull-jobs/{job_id}/cancel").status_code == 200
    wait_until(lambda: not any(list((fan.store(n) / ".eldric-partial").glob("sha256-*")) for n in names),
               timeout=20, message=f"the cancelled partials to go\n{fan.logs()}")
    listed_after_cancel = held_by(fan, model, names)

    fan.uplink.set_rate(32 * MIB)
    fan.uplink.reset()
    again = fan.wait_job(fan.pull(model, names), timeout=60)

    assert again["state"] == "completed", json.dumps(again, indent=1)
    blob_up = fan.uplink.bytes_by_path().get(model.uplink_path, 0)
    ratio = blob_up / model.blob_size
    assert listed_after_cancel == {} and ratio <= 1.05, \
        f"after the cancel the board listed {listed_after_cancel}; the next pull took {ratio:.2f} x the blob upstream"
    for name in names:
        fan.assert_model_intact(name, model)


def test_a_peer_answering_416_is_no_longer_listed_as_a_holder(fan, make_model, trio):
    model = make_model("fangone", 24)
    gone, asks = trio[0], trio[1]
    fan.uplink.set_rate(32 * MIB)
    first = fan.wait_job(fan.pull(model, [gone]), timeout=60)
    assert first["state"] == "completed", json.dumps(first, indent=1)
    fan.blob_file(gone, model.digest).unlink()  # gone behind the agent's back: it answers 416 from now on
    assert held_by(fan, model, [gone]) == {gone: model.ranges}

    fan.uplink.reset()
    job = fan.wait_job(fan.pull(model, [asks]), timeout=60)

    assert job["state"] == "completed", json.dumps(job, indent=1)
    fan.assert_model_intact(asks, model)
    assert held_by(fan, model, [gone, asks]) == {asks: model.ranges}
    rec = job["workers"][0]
    # (the small layers, the same in every test model, may be on its disk from an earlier test)
    assert rec["peer_bytes"] == 0 and model.blob_size <= rec["upstream_bytes"] <= model.size, rec
    assert fan.uplink.bytes_by_path().get(model.uplink_path, 0) <= 1.05 * model.blob_size
