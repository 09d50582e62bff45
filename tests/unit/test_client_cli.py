"""The `eldric` operator commands without a network: parsing, job following, resumable uploads (hand-written fakes)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import pytest
import requests
from rich.console import Console

from eldric.client import cli as client_cli
from eldric.client.cli import (ClientError, JobTracker, ResumableUpload, WorkerBars, default_name,
                               error_message, follow_job, parse_source, parse_sse, split_list)
from eldric.cli import build_parser
from eldric.transfer.model_registry import API_PREFIX as REGISTRY


@pytest.mark.parametrize("text, source", [
    ("registry", {"type": "registry"}),
    ("ollama", {"type": "ollama"}),
    ("worker:inf-3", {"type": "worker", "worker": "inf-3"}),
    ("https://hf.co/x/resolve/main/m.gguf", {"type": "url", "url": "https://hf.co/x/resolve/main/m.gguf"}),
])
def test_parse_source(text, source):
    assert parse_source(text) == source


def test_parse_source_url_options_and_errors():
    assert parse_source("http://h/m.gguf", token="t", sha256="sha256:ab", filename="m.gguf") == {
        "type": "url", "url": "http://h/m.gguf", "token": "t", "sha256": "sha256:ab", "filename": "m.gguf"}
    for bad in ("worker:", "ftp://h/m", "floppy", ""):
        with pytest.raises(ValueError, match="--from must be"):
            parse_source(bad)


def test_split_list_and_default_name():
    assert split_list("a, b,,c ") == ["a", "b", "c"] and split_list("") is None and split_list(None) is None
    assert default_name(Path("/x/qwen2.5 small.Q4.gguf")) == "qwen2.5-small.Q4"
    assert default_name(Path(".hidden")) == "hidden" and default_name(Path("/x/ü-.gguf")) == "model"


def test_parse_sse_events_comments_and_multiline_data():
    lines = ["retry: 3000", "event: snapshot", 'data: {"id": "j",', 'data: "workers": []}', "",
             ": keep-alive", "", "event: progress", 'data: {"workers": [{"worker": "a"}]}', "", "data: {}", ""]
    assert list(parse_sse(lines)) == [("snapshot", {"id": "j", "workers": []}),
                                      ("progress", {"workers": [{"worker": "a"}]}), ("message", {})]


def _response(status: int, body: bytes) -> requests.Response:
    resp = requests.Response()
    resp.status_code, resp._content = status, body
    return resp


@pytest.mark.parametrize("body, message", [
    (b'{"code": 404, "message": "no job \'x\'"}', "no job 'x'"),
    (b'{"code": 422, "errors": {"json": {"model": ["Not a valid string."]}}}', "model: Not a valid string."),
    (b"<html>bad gateway</html>", "<html>bad gateway</html>"),
])
def test_error_message(body, message):
    assert error_message(_response(400, body)) == message


def _job(state: str, *workers: dict) -> dict:
    """A job as the controller sends it: it says whether the state is final (the CLI derives nothing)."""
    return {"id": "j1", "kind": "pull", "model": "m:latest", "state": state, "workers": list(workers),
            "final": state in ("completed", "completed_with_skipped", "failed", "cancelled")}


def _w(worker: str, state: str, at: float = 1.0, **kw) -> dict:
    return {"worker": worker, "state": state, "updated_at": at, **kw}


def test_tracker_keeps_the_newest_record_per_worker():
    tracker = JobTracker(_job("running", _w("a", "pulling", 5, percent=50.0)))
    tracker.merge([_w("a", "pulling", 4, percent=40.0)])  # an older echo
    assert tracker.records["a"]["percent"] == 50.0
    tracker.merge([_w("a", "completed", 6)])
    assert tracker.records["a"]["state"] == "completed" and not tracker.finished  # the job view not final yet


def test_tracker_takes_the_job_state_from_the_events_not_from_the_records():
    tracker = JobTracker(_job("pending", _w("a", "pending"), _w("b", "pending")))
    tracker.merge([_w("a", "pulling", 2, job_state="running")])
    assert tracker.job["state"] == "running"
    tracker.merge([_w("a", "pulling", 1.5, job_state="pending")])  # an older echo: neither record nor state
    tracker.merge([_w("b", "offline", 2)])  # a state only readers derive: published by no write, no job_state
    assert tracker.job["state"] == "running" and tracker.records["a"]["updated_at"] == 2
    # b's own failure was never seen here, yet the write of a's completed record said the job failed.
    tracker.merge([_w("a", "completed", 3, job_state="failed", job_final=True)])
    assert tracker.job["state"] == "failed" and tracker.finished and tracker.records["b"]["state"] == "offline"


class FakeApi:
    """Scripted event streams (a list per connection; an exception to fail it) and job reads."""

    def __init__(self, streams: list, jobs: list[dict] | None = None) -> None:
        self.streams, self.jobs, self.gets = list(streams), list(jobs or []), 0

    def events(self, job_id: str):
        script = self.streams.pop(0)
        if isinstance(script, Exception):
            raise script
        yield from script

    def get(self, path: str, **params) -> dict:
        self.gets += 1
        return self.jobs.pop(0)


def test_follow_job_uses_the_stream_until_done():
    start = _job("pending", _w("a", "pending"), _w("b", "pending"))
    stream = [("snapshot", start), ("progress", {"workers": [_w("a", "pulling", 2, percent=10.0)]}),
              ("progress", {"workers": [_w("b", "failed", 3, error="boom")]}),
              ("done", _job("failed", _w("a", "completed", 4), _w("b", "failed", 3, error="boom")))]
    seen = []
    api = FakeApi([stream])
    tracker = follow_job(api, start, lambda t: seen.append({w: r["state"] for w, r in t.records.items()}))
    assert {"a": "pulling", "b": "pending"} in seen and seen[-1] == {"a": "completed", "b": "failed"}
    assert [r["error"] for r in tracker.failed()] == ["boom"] and api.gets == 0


def test_follow_job_ends_when_an_event_says_the_job_failed_without_reconnecting_or_polling():
    start = _job("running", _w("a", "pulling"), _w("b", "pulling"))
    # The stream is cut after the event (no `done`); the tracker's records alone still show b pulling.
    api = FakeApi([[("snapshot", start), ("progress", {"workers": [_w("a", "failed", 2, error="boom",
                                                                        job_state="failed", job_final=True)]})]])
    tracker = follow_job(api, start, lambda t: None, sleep=lambda s: pytest.fail("polled"))
    assert tracker.job["state"] == "failed" and tracker.records["b"]["state"] == "pulling"
    assert api.streams == [] and api.gets == 0  # one stream, no reconnect, no job read
    assert [r["error"] for r in tracker.failed()] == ["boom"]


def test_follow_job_reconnects_after_a_lifetime_end_and_polls_without_a_stream():
    start = _job("running", _w("a", "pulling"))
    final = _job("completed", _w("a", "completed", 9))
    api = FakeApi([[("snapshot", start), ("end", {"reason": "max_seconds"})], [("done", final)]])
    assert follow_job(api, start, lambda t: None).job["state"] == "completed" and api.gets == 0

    sleeps = []
    api = FakeApi([ClientError("HTTP 404: no such route", 404)], jobs=[start, final])
    tracker = follow_job(api, start, lambda t: None, sleep=sleeps.append)
    assert tracker.job["state"] == "completed" and api.gets == 2 and sleeps == [1.0]


def test_worker_bars_show_bytes_completion_and_the_failure_reason():
    buf = io.StringIO()
    bars = WorkerBars(Console(file=buf, width=160, force_terminal=False))
    with bars:
        bars.update(JobTracker(_job("failed", _w("inf-a", "completed", total=2000, completed=2000),
                                    _w("inf-b", "failed", error="digest [mismatch]"))))
    text = buf.getvalue()
    assert "inf-a" in text and "100%" in text and "2.0/2.0 kB" in text and "completed" in text
    assert "failed: digest [mismatch]" in text


class FakeRegistry:
    """The controller's model-registry upload API in memory, with faults on demand."""

    def __init__(self) -> None:
        self.drafts: dict[str, dict] = {}
        self.uploads: dict[str, bytearray] = {}
        self.calls: list[tuple[str, str]] = []
        self.patch_bytes: list[int] = []
        self.drop_after: int | None = None  # next PATCH: keep this many bytes, then the connection drops
        self.refuse_commit = False

    def __call__(self, method: str, path: str, **kw):
        self.calls.append((method, path))
        rel = path[len(REGISTRY):]
        if method == "POST" and rel == "":
            mid = f"m{len(self.drafts)}"
            self.drafts[mid] = dict(kw["json"], id=mid)
            return _json(self.drafts[mid])
        if method == "POST" and rel.endswith("/uploads"):
            uid = f"u{len(self.uploads)}"
            self.uploads[uid] = bytearray()
            return _json({"id": uid, "offset": 0})
        if method == "DELETE":
            self.drafts.pop(rel.strip("/"), None)
            return _json({})
        if method == "POST" and rel.endswith("/commit"):
            if self.refuse_commit:
                raise ClientError("HTTP 400: not a GGUF file", 400)
            return _json({"id": rel.split("/")[1], "name": "m", "size": len(self.uploads["u0"]), "format": "gguf"})
        uid = rel.split("/")[2]
        if uid not in self.uploads:
            raise ClientError("HTTP 404: no upload", 404)
        data = self.uploads[uid]
        if method == "GET":
            return _json({"offset": len(data)})
        if method == "PATCH":
            first = int(kw["headers"]["Content-Range"].split()[1].split("-")[0])
            if first != len(data):
                raise ClientError("HTTP 416: wrong offset", 416)
            chunk = kw["data"].read(self.drop_after if self.drop_after is not None else -1)
            data += chunk
            self.patch_bytes.append(len(chunk))
            if self.drop_after is not None:
                self.drop_after = None
                raise requests.ConnectionError("connection reset")
            return _json({"offset": len(data)})
        if method == "PUT":
            if kw["params"]["digest"] != "sha256:" + hashlib.sha256(data).hexdigest():
                raise ClientError("HTTP 400: digest mismatch", 400)
            return _json({"size": len(data)})
        raise AssertionError(f"unexpected {method} {path}")


def _json(body: dict) -> requests.Response:
    return _response(200, json.dumps(body).encode())


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + (bytes(range(256)) * 40)[4:])  # 10240 bytes; a GGUF to the head check
    return path


def _upload(reg, path, state_dir, **kw) -> ResumableUpload:
    return ResumableUpload(reg, path, name="m", chunk_bytes=4096, state_dir=state_dir, sleep=lambda s: None, **kw)


def test_upload_sends_chunks_with_the_digest_and_forgets_its_state(model_file, tmp_path):
    reg, seen = FakeRegistry(), []
    model = _upload(reg, model_file, tmp_path / "state").run(seen.append)
    assert bytes(reg.uploads["u0"]) == model_file.read_bytes() and model["size"] == 10240
    assert reg.patch_bytes == [4096, 4096, 2048] and seen[-1] == 10240
    assert reg.drafts["m0"]["source"] == "upload" and not list((tmp_path / "state").iterdir())


def test_upload_resumes_after_a_dropped_connection_that_kept_part_of_a_chunk(model_file, tmp_path):
    reg = FakeRegistry()
    reg.drop_after = 1000
    _upload(reg, model_file, tmp_path / "state").run(lambda n: None)
    assert bytes(reg.uploads["u0"]) == model_file.read_bytes()  # PUT checked the sha256 too
    assert reg.patch_bytes[:2] == [1000, 4096]


def test_upload_interrupted_then_run_again_continues_at_the_offset(model_file, tmp_path):
    reg = FakeRegistry()

    def interrupt_second_patch(method, path, **kw):
        if method == "PATCH" and reg.patch_bytes:
            raise KeyboardInterrupt
        return reg(method, path, **kw)

    with pytest.raises(KeyboardInterrupt):
        _upload(interrupt_second_patch, model_file, tmp_path / "state").run(lambda n: None)
    assert len(list((tmp_path / "state").iterdir())) == 1
    again = _upload(reg, model_file, tmp_path / "state")
    again.run(lambda n: None)
    assert again.resumed_at == 4096 and reg.patch_bytes == [4096, 4096, 2048] and len(reg.drafts) == 1
    assert bytes(reg.uploads["u0"]) == model_file.read_bytes()


def test_upload_starts_over_when_the_session_expired(model_file, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    first = _upload(FakeRegistry(), model_file, state)
    first.state_file.write_text(json.dumps({"model_id": "gone", "upload_id": "u9"}))
    reg = FakeRegistry()
    _upload(reg, model_file, state).run(lambda n: None)
    assert ("POST", REGISTRY) in reg.calls and bytes(reg.uploads["u0"]) == model_file.read_bytes()


def test_refused_commit_deletes_the_draft_and_forgets_the_session(model_file, tmp_path):
    reg = FakeRegistry()
    reg.refuse_commit = True
    with pytest.raises(ClientError, match="not a GGUF"):
        _upload(reg, model_file, tmp_path / "state").run(lambda n: None)
    assert ("DELETE", f"{REGISTRY}/m0") in reg.calls and not reg.drafts
    assert not list((tmp_path / "state").iterdir())


def test_upload_gives_up_after_the_attempts_and_keeps_the_session(model_file, tmp_path):
    def down(method, path, **kw):
        if method in ("PATCH", "GET"):
            raise requests.ConnectionError("refused")
        return reg(method, path, **kw)

    reg = FakeRegistry()
    with pytest.raises(ClientError, match="run the same command again to resume"):
        ResumableUpload(down, model_file, name="m", state_dir=tmp_path / "state", attempts=3,
                        sleep=lambda s: None).run(lambda n: None)
    assert len(list((tmp_path / "state").iterdir())) == 1


def test_registry_without_an_action_still_runs_the_service():
    served, _ran = [], []
    parser = argparse.ArgumentParser(prog="eldric")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("registry")
    reg.add_argument("--port", type=int, default=8892)
    reg.set_defaults(func=served.append)
    client_cli.add_commands(sub)
    args = parser.parse_args(["registry", "--port", "9"])
    args.func(args)
    assert served and served[0].port == 9 and served[0].registry_action is None

    args = parser.parse_args(["registry", "upload", "m.gguf", "--name", "n", "--controller", "http://c:1"])
    assert (args.registry_action, args.target, args.name, args.controller) == ("upload", "m.gguf", "n", "http://c:1")
    real = build_parser().parse_args(["registry", "--port", "1", "--storage", "/tmp/x"])
    assert real.registry_action is None and real.storage == "/tmp/x"
    for argv in (["pull", "m", "--workers", "a,b", "--json"], ["jobs", "j1", "-f"], ["models"], ["workers", "w"],
                 ["show", "m"], ["distribute", "m", "--from", "worker:a", "--to", "b"], ["registry", "list"]):
        assert callable(build_parser().parse_args(argv).func)


class _StatusApi:
    """Answers like the controller: first unreachable, then fewer workers online than expected, then all."""

    base = "http://ctl:8880"

    def __init__(self, answers: list) -> None:
        self.answers = answers

    def get(self, path: str, **_params):
        if path == "/healthz":
            if self.answers[0] == "down":
                self.answers.pop(0)
                raise client_cli.ClientError("cannot reach the controller at http://ctl:8880 (ConnectionError)")
            return {"status": "ok"}
        return {"workers": self.answers.pop(0)}


def test_cluster_status_waits_for_the_expected_workers():
    one = [{"id": "a", "type": "inference", "online": True}, {"id": "b", "type": "cloud", "online": False}]
    two = [{**w, "online": True} for w in one]
    slept: list[float] = []
    status = client_cli.cluster_status(_StatusApi(["down", one, two]), expect_workers=2, wait=10, sleep=slept.append,
                                clock=lambda: 0.0)
    assert status == {"ok": True, "workers": two} and len(slept) == 2


def test_cluster_status_says_what_is_missing_when_time_is_up():
    ticks = iter([0.0, 5.0, 11.0])
    one = [{"id": "a", "type": "inference", "online": True}]
    status = client_cli.cluster_status(_StatusApi([one, one]), expect_workers=3, wait=10, sleep=lambda s: None,
                                clock=lambda: next(ticks))
    assert status == {"ok": False, "problem": "1 of 3 workers online"}


class _CallsApi:
    """Records the calls of `jobs cancel` and `workers remove`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def post(self, path: str, body: dict) -> dict:
        self.calls.append(("POST", path))
        return {"id": "j1", "state": "cancelled"}

    def call(self, method: str, path: str, **kw) -> requests.Response:
        self.calls.append((method, path))
        return _response(204, b"")


def test_jobs_cancel_and_workers_remove_call_the_api():
    api, out = _CallsApi(), Console(file=io.StringIO())
    parser = build_parser()
    assert client_cli.cmd_jobs(api, parser.parse_args(["jobs", "cancel", "j1"]), out, out) == 0
    assert client_cli.cmd_workers(api, parser.parse_args(["workers", "remove", "old 1"]), out, out) == 0
    assert client_cli.cmd_workers(api, parser.parse_args(["workers", "remove", "w2", "--force"]), out, out) == 0
    assert api.calls == [("POST", "/api/v1/models/pull-jobs/j1/cancel"), ("DELETE", "/api/v1/workers/old%201"),
                         ("DELETE", "/api/v1/workers/w2?force=true")]
    assert "cancelled" in out.file.getvalue() and "worker w2 removed" in out.file.getvalue()
    with pytest.raises(ClientError):
        client_cli.cmd_jobs(api, parser.parse_args(["jobs", "cancel"]), out, out)


def test_a_job_with_skipped_workers_exits_0_and_says_who_catches_up():
    done = _job("completed_with_skipped", _w("a", "completed"), _w("b", "skipped"))
    out = Console(file=io.StringIO(), width=200)
    api = FakeApi([[("done", done)]])
    args = argparse.Namespace(no_wait=False, json=False)
    assert client_cli._run_job(api, {**done, "state": "running", "final": False, "model": "m", "kind": "pull"}, args, out, out) == 0
    text = out.file.getvalue()
    assert "completed on 1 of 2" in text and "skipped (offline): b" in text


class _PostsApi:
    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict]] = []

    def post(self, path: str, body: dict) -> dict:
        self.bodies.append((path, body))
        return {"id": "j1", "state": "pending", "final": False, "workers": [], "kind": "pull", "model": "m"}


def test_pull_and_distribute_send_the_placement_keys():
    api, out = _PostsApi(), Console(file=io.StringIO())
    parser = build_parser()
    args = parser.parse_args(["pull", "m", "--replicas", "2", "--selector", "zone=a, type=inference",
                              "--spread", "zone", "--gpu", "--make-room", "--no-wait", "--json"])
    client_cli.cmd_pull(api, args, out, out)
    client_cli.cmd_distribute(api, parser.parse_args(["distribute", "m", "--from", "registry", "--replicas", "1",
                                                      "--no-wait", "--json"]), out, out)
    assert api.bodies[0] == ("/api/v1/models/pull", {"model": "m", "replicas": 2, "spread": "zone", "gpu": True,
                                                     "selector": {"zone": "a", "type": "inference"},
                                                     "make_room": True})
    assert api.bodies[1][1]["replicas"] == 1 and "selector" not in api.bodies[1][1]
    with pytest.raises(ClientError, match="key=value"):
        client_cli.cmd_pull(api, parser.parse_args(["pull", "m", "--selector", "zone", "--no-wait"]), out, out)
