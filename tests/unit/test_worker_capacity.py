"""Worker labels and capacity facts (issue 25): the agent's ELDRIC_LABELS, its GPUs (NVML or nvidia-smi,
faked here: no GPUs on CI), the record fields it writes at registration and every heartbeat, and the
worker views (/api/v1/workers with ?selector=, /api/v1/workers/{id}) and `eldric workers` showing them."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import time
import types
from pathlib import Path

import fakeredis
import pytest

from controller import create_app
from eldric.cluster import keys
from eldric.cluster import workers as cluster_workers
from eldric.cluster.capacity import Gpu, facts_of
from eldric.core.settings import SettingsError
from worker_agent import gpus, membership
from worker_agent.main import capacity_facts, worker_info
from worker_agent.settings import AgentSettings

GIB = 1 << 30
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", 81559 << 20, 80000 << 20)


def agent_settings(tmp_path: Path, **env: str) -> AgentSettings:
    return AgentSettings.from_env({"ELDRIC_WORKER_NAME": "gpu1", "ELDRIC_WORKER_TYPE": "inference",
                                   "ELDRIC_DATA_DIR": str(tmp_path / "node"), **env})


# --- the setting ---------------------------------------------------------------------------------

def test_labels_are_read_from_the_environment_and_the_flag_wins(tmp_path):
    assert agent_settings(tmp_path, ELDRIC_LABELS="zone=a, gpu=h100,,").labels == {"zone": "a", "gpu": "h100"}
    assert agent_settings(tmp_path).labels == {}
    flag = AgentSettings.from_env({"ELDRIC_WORKER_NAME": "w", "ELDRIC_WORKER_TYPE": "inference",
                                   "ELDRIC_LABELS": "zone=a"}, labels="zone=b,rack=r7")
    assert flag.labels == {"zone": "b", "rack": "r7"}
    assert "ELDRIC_LABELS=zone=b,rack=r7" in flag.effective()


@pytest.mark.parametrize("value, says", [
    ("zone", "has no '='"),
    ("=a", "empty key"),
    ("zone=a,=b", "empty key"),
    ("-zone=a", "is not a name"),
    ("zo ne=a", "is not a name"),
    ("zone/x=a", "is not a name"),
    ("k" * 64 + "=a", "is not a name"),
    ("zone=a b", "value"),
    ("zone=a,zone=b", "given twice"),
])
def test_a_bad_label_stops_the_agent_at_start_naming_the_setting(tmp_path, value, says):
    with pytest.raises(SettingsError) as caught:
        agent_settings(tmp_path, ELDRIC_LABELS=value)
    assert str(caught.value).startswith("labels (ELDRIC_LABELS): ") and says in str(caught.value)


def test_the_worker_command_takes_repeated_label_flags(tmp_path, monkeypatch):
    from worker_agent import cli
    import argparse
    seen = {}
    monkeypatch.setattr("worker_agent.main.run_agent", lambda s, loglevel: seen.setdefault("labels", s.labels) and 0)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--type", "inference", "--name", "w1", "--data-dir", str(tmp_path),
                              "--label", "zone=a", "--label", "gpu=h100,rack=r1"])
    cli.run(args)
    assert seen["labels"] == {"zone": "a", "gpu": "h100", "rack": "r1"}
    bad = parser.parse_args(["--type", "inference", "--name", "w1", "--label", "zone"])
    assert cli.run(bad) == 2


# --- GPUs ------------------------------------------------------------------------------------------

def fake_smi(tmp_path: Path, body: str, exit_code: int = 0) -> Path:
    """A `nvidia-smi` on PATH that prints `body` for the query the agent sends (and checks it sent it)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      f"assert sys.argv[1:] == {gpus.SMI_QUERY!r}, sys.argv\n"
                      f"sys.stdout.write({body!r})\nsys.stderr.write('driver says no')\nsys.exit({exit_code})\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bindir


@pytest.fixture
def no_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError, as without the extra


def test_nvidia_smi_on_path_gives_the_gpus_in_bytes(tmp_path, monkeypatch, no_nvml):
    bindir = fake_smi(tmp_path, "0, NVIDIA H100 80GB HBM3, 81559, 80000\n1, NVIDIA L4, 23034, [N/A]\n"
                                "2, NVIDIA L4, 23034, 22000\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert gpus.read_gpus() == [H100, Gpu(2, "NVIDIA L4", 23034 << 20, 22000 << 20)]


def test_a_failing_nvidia_smi_or_none_on_path_is_no_gpus(tmp_path, monkeypatch, no_nvml):
    monkeypatch.setenv("PATH", str(fake_smi(tmp_path, "", exit_code=9)))
    assert gpus.read_gpus() == []
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpus.read_gpus() == []


class FakeNvml(types.ModuleType):
    """pynvml as nvidia-ml-py has it, over a list of devices; `fail_init` as on a node without the driver."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[tuple[bytes | str, int, int]], fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.devices, self.fail_init, self.open = devices, fail_init, 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")
        self.open += 1

    def nvmlShutdown(self):
        self.open -= 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.devices[index]

    def nvmlDeviceGetName(self, handle):
        return handle[0]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(total=handle[1], free=handle[2], used=handle[1] - handle[2])


def test_nvml_comes_first_and_is_shut_down(tmp_path, monkeypatch):
    nvml = FakeNvml([(b"NVIDIA H100 80GB HBM3", 81559 << 20, 80000 << 20), ("NVIDIA L4", 4 * GIB, GIB)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("PATH", str(fake_smi(tmp_path, "0, From smi, 1, 1\n")))
    assert gpus.read_gpus() == [H100, Gpu(1, "NVIDIA L4", 4 * GIB, GIB)]
    assert nvml.open == 0


def test_nvml_without_a_driver_falls_back_to_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], fail_init=True))
    monkeypatch.setenv("PATH", str(fake_smi(tmp_path, "0, NVIDIA H100 80GB HBM3, 81559, 80000\n")))
    assert gpus.read_gpus() == [H100]


def test_the_probe_reads_at_most_once_per_max_age_and_keeps_the_last_reading_on_failure():
    now, answers = [0.0], [[H100], RuntimeError("hung driver"), []]

    def read():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    probe = gpus.GpuProbe(max_age=30, read=read, clock=lambda: now[0], background=False)
    assert probe() == [H100] and probe() == [H100] and len(answers) == 2
    now[0] = 31
    assert probe() == [H100] and len(answers) == 1  # the read failed: the last reading stands
    now[0] = 62
    assert probe() == []


def test_a_hung_gpu_read_never_delays_the_heartbeat():
    """After the first reading, a refresh runs beside the caller, who gets the last reading at once."""
    import threading
    now, release, calls = [0.0], threading.Event(), []

    def read():
        calls.append(now[0])
        if len(calls) > 1:
            release.wait(10)  # nvidia-smi hanging until its timeout
            return []
        return [H100]
    probe = gpus.GpuProbe(max_age=30, read=read, clock=lambda: now[0])
    assert probe() == [H100]
    now[0] = 31
    started = time.monotonic()
    assert probe() == [H100] and probe() == [H100]  # the hung refresh is not waited for, nor started twice
    assert time.monotonic() - started < 1 and calls == [0.0, 31]
    release.set()
    deadline = time.monotonic() + 5
    while probe() != [] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert probe() == [] and calls == [0.0, 31]


# --- the record ------------------------------------------------------------------------------------

def test_registration_writes_labels_store_disk_and_gpus(tmp_path):
    s = agent_settings(tmp_path, ELDRIC_LABELS="zone=a,gpu=h100")
    info = worker_info(s, "http://127.0.0.1:1", capacity_facts(s, gpu_probe=lambda: [H100]))
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    cluster_workers.register(client, info, ttl=15)
    facts = facts_of(cluster_workers.record(client, "gpu1"))
    assert facts.labels == {"gpu": "h100", "zone": "a"} and facts.gpus == (H100,)
    assert facts.disk_total == shutil.disk_usage(tmp_path).total and 0 < facts.disk_free <= facts.disk_total


def test_a_store_not_created_yet_is_measured_on_its_nearest_existing_parent(tmp_path):
    assert membership.store_disk(tmp_path / "ollama" / "models")[1] == shutil.disk_usage(tmp_path).total


def test_every_heartbeat_refreshes_the_facts_and_a_reregistration_carries_them(tmp_path):
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    s = agent_settings(tmp_path, ELDRIC_LABELS="zone=a")
    Path(s.models_dir).mkdir(parents=True)
    seen = [[H100]]
    facts = capacity_facts(s, gpu_probe=lambda: seen[-1])
    info = worker_info(s, "http://127.0.0.1:1", facts)
    cluster_workers.register(client, info, ttl=15)
    seen.append([])
    client.hset(keys.worker("gpu1"), "free_disk", "1")
    assert membership.beat(client, "gpu1", tmp_path, ttl=15, info=info, facts=facts) is False
    after = facts_of(cluster_workers.record(client, "gpu1"))
    assert after.gpus == () and after.disk_free > 1 and after.labels == {"zone": "a"}
    client.flushall()  # Redis restarted empty: the agent registers again, with today's facts
    seen.append([H100, H100])
    assert membership.beat(client, "gpu1", tmp_path, ttl=15, info=info, facts=facts) is True
    assert len(facts_of(cluster_workers.record(client, "gpu1")).gpus) == 2


def test_a_probe_that_raises_does_not_fail_the_heartbeat(tmp_path):
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    s = agent_settings(tmp_path)

    def broken():
        raise OSError("nvidia-smi hung")
    facts = capacity_facts(s, gpu_probe=broken)
    cluster_workers.register(client, worker_info(s, "http://x:1", facts), ttl=15)
    assert membership.beat(client, "gpu1", tmp_path, ttl=15, facts=facts) is False
    assert client.hget(keys.worker("gpu1"), "gpus") == "[]"


def test_an_unreadable_store_reads_as_unknown_disk(tmp_path, monkeypatch):
    def fail(path):
        raise PermissionError(13, "denied")
    monkeypatch.setattr(membership.shutil, "disk_usage", fail)
    assert membership.store_disk(tmp_path) == (None, None)
    assert "free_disk" not in membership.capacity_facts(tmp_path, {}, lambda: [])


# --- the views ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app():
    return create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "", "CHECK_UPSTREAM": False,
                       "VIEW_CACHE_SECONDS": 0})


@pytest.fixture
def api(app):
    app.extensions["eldric.redis"] = store = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    for wid, labels, extra in (("a1", "zone=a,gpu=h100", {"disk_high_watermark": str(90 * GIB),
                                                        "disk_low_watermark": str(80 * GIB)}),
                               ("a2", "zone=a", {}), ("b1", "zone=b", {})):
        s = AgentSettings.from_env({"ELDRIC_WORKER_NAME": wid, "ELDRIC_WORKER_TYPE": "inference",
                                    "ELDRIC_LABELS": labels, "ELDRIC_DATA_DIR": "/tmp"})
        info = worker_info(s, f"http://{wid}:1", capacity_facts(s, gpu_probe=lambda w=wid: [H100] if w == "a1" else []))
        cluster_workers.register(store, {**info, **extra}, ttl=15)
    store.hset(keys.worker("old"), mapping={"id": "old", "type": "inference", "free_disk": "5",
                                                    "last_seen": str(time.time())})  # an older agent
    store.sadd(keys.WORKERS, "old")
    return app.test_client()


def test_the_worker_views_show_labels_disk_gpus_and_watermarks(api):
    listed = {w["id"]: w for w in api.get("/api/v1/workers").get_json()["workers"]}
    one = api.get("/api/v1/workers/a1").get_json()
    assert listed["a1"] == one
    assert one["labels"] == {"gpu": "h100", "zone": "a"}
    assert one["gpus"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total": 81559 << 20,
                            "memory_free": 80000 << 20}]
    assert one["disk_total"] >= one["disk_free"] > 0 and one["free_disk"] == one["disk_free"]
    assert (one["disk_high_watermark"], one["disk_low_watermark"]) == (90 * GIB, 80 * GIB)
    old = listed["old"]
    assert (old["labels"], old["gpus"], old["disk_free"], old["disk_total"], old["disk_high_watermark"]) == \
        ({}, [], 5, None, None)


def test_the_worker_list_filters_by_a_label_selector(api):
    def ids(selector):
        answer = api.get("/api/v1/workers", query_string={"selector": selector})
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        assert body["total"] == len(body["workers"])
        return [w["id"] for w in body["workers"]]
    assert ids("zone=a") == ["a1", "a2"]
    assert ids("zone=a,gpu=h100") == ["a1"]
    assert ids("zone=c") == []
    assert ids("zone=a,zone=b") == []  # no worker is in both zones; not an error
    assert ids("") == ["a1", "a2", "b1", "old"]


@pytest.mark.parametrize("selector", ["zone", "=a", "-x=1", "zone=a,", " zone=a", "zone=a\n", "zone=a b"])
def test_a_bad_selector_is_refused_naming_it(api, selector):
    answer = api.get("/api/v1/workers", query_string={"selector": selector})
    assert answer.status_code == 422
    assert "selector" in json.dumps(answer.get_json())


class ViewApi:
    """The CLI's Api over the Flask test client."""

    def __init__(self, client) -> None:
        self.client, self.paths = client, []

    def get(self, path: str) -> dict:
        self.paths.append(path)
        answer = self.client.get(path)
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()


def test_the_cli_shows_labels_disk_and_gpus(api):
    import io
    from rich.console import Console
    from eldric.client import cli
    out = Console(file=io.StringIO(), width=250)
    via = ViewApi(api)
    from eldric.cli import build_parser
    parser = build_parser()
    assert cli.cmd_workers(via, parser.parse_args(["workers", "--selector", "zone=a"]), out, out) == 0
    text = out.file.getvalue()
    assert via.paths == ["/api/v1/workers?selector=zone=a"]
    row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("a1"))
    assert "gpu=h100,zone=a" in row and re.search(r"\d+\.\d [kMGT]B free of \d+\.\d [kMGT]B", row)
    assert "b1" not in text and "2 of 2 worker(s) online" in text
    out = Console(file=io.StringIO(), width=250)
    assert cli.cmd_workers(via, parser.parse_args(["workers", "a1"]), out, out) == 0
    text = out.file.getvalue()
    assert "labels gpu=h100,zone=a; GPUs NVIDIA H100 80GB HBM3 (83.9 GB free of 85.5 GB)" in text
