"""Operator commands of `eldric`: pull, jobs, models, workers, show, distribute, registry list|upload|delete,
export and import.

They talk only to the controller's REST API: `--controller URL` (default $ELDRIC_CONTROLLER, then
http://127.0.0.1:8880) and `--token` (default $ELDRIC_API_TOKEN). Tables for people, `--json` for
scripts. `pull` and `distribute` draw one progress bar per worker from the job's event stream
(GET /api/v1/models/pull-jobs/<id>/events), polling the job when the stream is unavailable, and
exit 1 when any worker failed. `export` and `import` talk to the data node's OCI API (`/v2/`) instead:
`--registry URL` (default $ELDRIC_REGISTRY_URL, then http://127.0.0.1:8892) and `--token` (default
$ELDRIC_API_TOKEN, then $ELDRIC_CLUSTER_SECRET).
"""

from __future__ import annotations

import argparse
from urllib.parse import quote
import json
import os
import re
import sys
import time
from pathlib import Path
from collections.abc import Callable

import requests
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TaskProgressColumn, TextColumn,
                           TransferSpeedColumn)
from rich.table import Table

from eldric.client.api import DEFAULT_CONTROLLER, Api, ClientError, error_message, parse_sse  # noqa: F401
from eldric.client.bundles import BundleError, export_bundle, import_bundle
from eldric.client.upload import ResumableUpload, default_name
from eldric.core.redaction import redact_url
from eldric.transfer.model_registry import API_PREFIX, model_path
from eldric.transfer.oci_client import OciClient, OciClientError
STATE_STYLE = {"completed": "green", "failed": "red", "pulling": "blue", "running": "blue", "retrying": "yellow",
               "offline": "dim", "skipped": "yellow", "completed_with_skipped": "yellow", "cancelled": "magenta",
               "deleting": "blue"}


def parse_source(text: str, *, token: str | None = None, sha256: str | None = None,
                 filename: str | None = None) -> dict:
    """`registry`, `ollama`, `worker:<id>` or an http(s) URL -> the distribute API's `source` object."""
    if text in ("registry", "ollama"):
        return {"type": text}
    if text.startswith("worker:") and len(text) > len("worker:"):
        return {"type": "worker", "worker": text[len("worker:"):]}
    if text.startswith(("http://", "https://")):
        source = {"type": "url", "url": text, "token": token, "sha256": sha256, "filename": filename}
        return {k: v for k, v in source.items() if v}
    raise ValueError(f"--from must be registry, ollama, worker:<id> or an http(s) URL, not {text!r}")


def split_list(text: str | None) -> list[str] | None:
    items = [part.strip() for part in (text or "").split(",") if part.strip()]
    return items or None


class JobTracker:
    """What is known of one job: the snapshot, then each worker's newest record."""

    def __init__(self, job: dict) -> None:
        self.apply(job)

    def apply(self, job: dict) -> None:
        self.job = job
        self.records = {w["worker"]: w for w in job.get("workers", [])}

    def merge(self, records: list[dict]) -> None:
        """Keep each worker's newest record; a published one carries the job's state after it (`job_state`,
        and `job_final` when that state is a final one).

        The records the controller re-reads for states only readers derive (offline) carry no
        `job_state` and leave the job's state as it was.
        """
        for record in records:
            old = self.records.get(record["worker"])
            if old is None or float(record.get("updated_at") or 0) >= float(old.get("updated_at") or 0):
                self.records[record["worker"]] = record
                if record.get("job_state"):
                    self.job = {**self.job, "state": record["job_state"], "final": bool(record.get("job_final"))}

    @property
    def finished(self) -> bool:
        """Whether the controller (the snapshot's `final`, or the last event's `job_final`) says the job ended."""
        return bool(self.job.get("final"))

    def failed(self) -> list[dict]:
        return [r for r in self.records.values() if r.get("state") == "failed"]


def follow_job(api: Api, job: dict, on_change: Callable[[JobTracker], None], *, poll_seconds: float = 1.0,
               sleep: Callable[[float], None] = time.sleep) -> JobTracker:
    """Follow a job to its end: the event stream while it works, polling GET pull-jobs/<id> otherwise.

    The stream is read to its `done` (the final job); when it is cut after an event's `job_state`
    already said the job ended, the follow ends there, without reconnecting or polling.
    """
    tracker = JobTracker(job)
    on_change(tracker)
    streams = 0
    while not tracker.finished and streams < 50:
        streams += 1
        try:
            for event, data in api.events(job["id"]):
                if event in ("snapshot", "done"):
                    tracker.apply(data)
                elif event == "progress":
                    tracker.merge(data.get("workers", []))
                on_change(tracker)
                if event == "done":
                    return tracker
        except (ClientError, requests.RequestException, ValueError):
            break  # no stream (old controller, proxy in between): poll instead
    while not tracker.finished:
        tracker.apply(api.get(f"/api/v1/models/pull-jobs/{job['id']}"))
        on_change(tracker)
        if not tracker.finished:
            sleep(poll_seconds)
    return tracker


class WorkerBars:
    """One rich progress bar per worker, like `ollama pull` draws one per layer."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("{task.fields[worker]:<16}"), BarColumn(), TaskProgressColumn(),
                                 DownloadColumn(), TransferSpeedColumn(), TextColumn("{task.fields[status]}"),
                                 console=console)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> WorkerBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, tracker: JobTracker) -> None:
        for wid in sorted(tracker.records):
            r = tracker.records[wid]
            total = int(r.get("total") or 0) or None
            state = r.get("state", "pending")
            done = int(r.get("total") or 0) if state == "completed" else int(r.get("completed") or 0)
            status = f"[red]failed: {_esc(r.get('error') or r.get('status'))}" if state == "failed" else (
                "[green]completed" if state == "completed" else _esc(r.get("status") or state))
            if wid not in self.tasks:
                self.tasks[wid] = self.progress.add_task(wid, total=total, worker=wid, status=status)
            if state == "completed" and not total:
                total = done = 1  # nothing to transfer: show a full bar
            self.progress.update(self.tasks[wid], total=total, completed=done, status=status)


def _styled(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state


def _esc(text: object) -> str:
    return str(text).replace("[", r"\[")


def human_bytes(n: float | None) -> str:
    n = float(n or 0)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_time(value: float | str | None) -> str:
    if not value:
        return "-"
    if isinstance(value, str):
        return value.replace("T", " ").replace("Z", "")[:19]
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value)))


def counts_text(summary: dict) -> str:
    counts = summary.get("counts") or {}
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


# ---- commands ----------------------------------------------------------------------------------

def _table(*columns: str, header: bool = True) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, show_header=header)
    for column in columns:
        table.add_column(column, no_wrap=column in ("ID", "CREATED", "MODIFIED", "LAST SEEN"))
    return table


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _run_job(api: Api, job: dict, args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.no_wait:
        _print_json(job) if args.json else out.print(f"job {job['id']} started ({job['kind']} {job['model']})")
        return 0
    if args.json:
        tracker = follow_job(api, job, lambda t: None)
        _print_json(tracker.job)
    else:
        with WorkerBars(err if not out.is_terminal else out) as bars:
            tracker = follow_job(api, job, bars.update)
    for record in tracker.failed():
        err.print(f"[red]✘ {record['worker']}: {_esc(record.get('error') or record.get('status'))}")
    skipped = [r["worker"] for r in tracker.records.values() if r.get("state") == "skipped"]
    if not args.json:
        state = tracker.job.get("state")
        verb = "failed on" if tracker.failed() else "cancelled; completed on" if state == "cancelled" else "completed on"
        n = len(tracker.failed()) or sum(r.get("state") == "completed" for r in tracker.records.values())
        out.print(f"{job['model']}: {verb} {n} of {len(tracker.records)} worker(s) (job {job['id']})")
        if skipped:
            out.print(f"skipped (offline): {', '.join(skipped)}; they catch up when they return")
    return 1 if tracker.failed() or tracker.job.get("state") not in ("completed", "completed_with_skipped") else 0


def _placement(args: argparse.Namespace) -> dict:
    """The placement keys of a pull or distribution (README "Placement"); the controller checks them."""
    found: dict = {"replicas": args.replicas, "spread": args.spread}
    if args.selector:
        pairs = [p.strip() for p in args.selector.split(",") if p.strip()]
        if any("=" not in p for p in pairs):
            raise ClientError(f"--selector {args.selector!r}: give key=value pairs joined by commas, e.g. zone=a")
        found["selector"] = dict(p.split("=", 1) for p in pairs)
    if args.gpu:
        found["gpu"] = True
    if args.make_room:
        found["make_room"] = True
    return found


def cmd_pull(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    body = {"model": args.model, "workers": split_list(args.workers), "deadline_seconds": args.deadline,
            **_placement(args)}
    job = api.post("/api/v1/models/pull", {k: v for k, v in body.items() if v is not None})
    return _run_job(api, job, args, out, err)


def cmd_distribute(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    try:
        source = parse_source(args.source, token=args.source_token, sha256=args.sha256, filename=args.filename)
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    body = {"model": args.model, "source": source, "workers": split_list(args.to), **_placement(args)}
    job = api.post("/api/v1/models/distribute", {k: v for k, v in body.items() if v is not None})
    return _run_job(api, job, args, out, err)


def cmd_jobs(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.id == "cancel":
        if not args.target:
            raise ClientError("usage: eldric jobs cancel ID")
        job = api.post(f"/api/v1/models/pull-jobs/{quote(args.target, safe='')}/cancel", {})
        _print_json(job) if args.json else out.print(f"job {job['id']}: {_styled(job['state'])}")
        return 0
    if args.id:
        job = api.get(f"/api/v1/models/pull-jobs/{quote(args.id, safe='')}")
        if args.follow and not job.get("final"):
            return _run_job(api, job, argparse.Namespace(no_wait=False, json=args.json), out, err)
        if args.json:
            _print_json(job)
            return 0
        out.print(f"job {job['id']}: {job['kind']} {job['model']} from {job.get('source')} - "
                  f"{_styled(job['state'])} (created {human_time(job['created_at'])})")
        table = _table("WORKER", "STATE", "PROGRESS", "BYTES", "STATUS")
        for w in job["workers"]:
            state = w.get("state", "")
            table.add_row(w["worker"], _styled(state), f"{w.get('percent') or 0:.1f}%",
                          f"{human_bytes(w.get('completed'))} / {human_bytes(w.get('total'))}",
                          _esc(w.get("error") or w.get("status") or ""))
        out.print(table)
        return 0
    data = api.get("/api/v1/models/pull-jobs", limit=args.limit, state=args.state, kind=args.kind)
    if args.json:
        _print_json(data)
        return 0
    table = _table("ID", "KIND", "MODEL", "STATE", "WORKERS", "PROGRESS", "CREATED")
    for job in data["jobs"]:
        summary = job.get("summary") or {}
        table.add_row(job["id"], job["kind"], job["model"], _styled(job["state"]),
                      counts_text(summary), f"{summary.get('percent') or 0:.1f}%", human_time(job["created_at"]))
    out.print(table)
    out.print(f"{len(data['jobs'])} of {data['total']} job(s)")
    return 0


def cmd_models(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    data = api.get("/api/v1/models")
    if args.json:
        _print_json(data)
        return 0
    table = _table("NAME", "SIZE", "FORMAT", "COVERAGE", "WORKERS", "MODIFIED", "DIGESTS")
    for m in data["models"]:
        coverage = f"{m['coverage']:.1f}%" if m["coverage"] >= 100 else f"[yellow]{m['coverage']:.1f}%"
        table.add_row(m["name"], human_bytes(m["size"]), m.get("format") or "-", coverage,
                      f"{len(m['workers'])}/{data['eligible_workers']}", human_time(m.get("modified_at")),
                      "same" if m.get("consistent") else "[red]differ")
    out.print(table)
    return 0


def cluster_status(api: Api, *, expect_workers: int = 0, wait: float = 0.0, poll: float = 1.0,
                   sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> dict:
    """The controller's health and its workers, waiting up to `wait` s for `expect_workers` online."""
    end = clock() + wait
    while True:
        try:
            api.get("/healthz")
            workers = api.get("/api/v1/workers")["workers"]
            online = [w for w in workers if w["online"]]
            if len(online) >= expect_workers:
                return {"ok": True, "workers": workers}
            problem = f"{len(online)} of {expect_workers} workers online"
        except ClientError as exc:
            if exc.status in (401, 403):  # up, but it refuses us: no wait mends that
                return {"ok": False, "problem": str(exc), "unauthorized": True}
            problem = str(exc)
        if clock() >= end:
            return {"ok": False, "problem": problem}
        sleep(poll)


def cmd_status(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    status = cluster_status(api, expect_workers=args.expect_workers, wait=args.wait)
    if args.json:
        _print_json(status)
        return 0 if status["ok"] else 1
    if status.get("unauthorized"):
        err.print(f"[red]eldric status: the controller at {_esc(redact_url(api.base))} is up but refused the request: "
                  f"{_esc(status['problem'])}; {token_hint(api)}")
        return 1
    if not status["ok"]:
        err.print(f"[red]eldric status: the cluster is not up after {args.wait:.0f} s: {_esc(status['problem'])}")
        return 1
    rows = [("dashboard", f"{api.base}/dashboard"), ("API docs", f"{api.base}/api/v1/docs")]
    if args.flower:
        rows.append(("Flower", args.flower))
    if args.upstream:
        rows.append(("upstream", f"{redact_url(args.upstream)} (ELDRIC_OLLAMA_REGISTRY: where registry.ollama.ai names are "
                                 "pulled from)"))
    workers = sorted(status["workers"], key=lambda w: (w["type"], w["id"]))
    rows.append(("workers", ", ".join(f"{w['id']} ({w['type']}{'' if w['online'] else ', offline'})" for w in workers)
                 or "none registered"))
    out.print("[green]cluster is up[/]")
    for label, value in rows:
        out.print(f"  {label:<10} {_esc(value)}")
    return 0


def cmd_workers(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.id == "remove":
        if not args.target:
            raise ClientError("usage: eldric workers remove ID [--force]")
        path = f"/api/v1/workers/{quote(args.target, safe='')}" + ("?force=true" if args.force else "")
        try:
            resp = api.call("DELETE", path)
        except ClientError as exc:
            if exc.status == 409:  # the API's words name its query parameter; here it is a flag
                raise ClientError(f"worker {args.target} is online; stop its agent first, or run "
                                  f"eldric workers remove {args.target} --force", 409) from None
            raise
        _print_json({"removed": args.target}) if args.json else out.print(f"worker {args.target} removed")
        return 0 if resp.ok else 1
    if args.id:
        worker = api.get(f"/api/v1/workers/{quote(args.id, safe='')}")
        models = api.get(f"/api/v1/workers/{quote(args.id, safe='')}/models")
        if args.json:
            _print_json({**worker, "local_models": models["models"]})
            return 0
        online = "[green]online[/]" if worker["online"] else "[red]offline[/]"
        backends = ", ".join(worker.get("backends") or []) or "-"
        out.print(f"{worker['id']} ({worker['type']}) {online}, backends {backends}, "
                  f"disk {disk_text(worker)}, address {worker.get('address') or '-'}")
        if worker.get("labels") or worker.get("gpus"):
            gpus = ", ".join(f"{g['name']} ({human_bytes(g['memory_free'])} free of {human_bytes(g['memory_total'])})"
                             for g in worker.get("gpus") or [])
            out.print(f"labels {_esc(labels_text(worker)) or '-'}; GPUs {_esc(gpus) or 'none'}", highlight=False)
        table = _table("MODEL", "SIZE", "MODIFIED", "FORMAT", "BACKENDS")
        for m in models["models"]:
            served = m.get("backends")  # an agent before per-backend inventories sends only `backend`
            table.add_row(m["name"], human_bytes(m.get("size")), human_time(m.get("modified_at")), m.get("format") or "-",
                          (", ".join(served) or "stored, not served") if isinstance(served, list) else m.get("backend") or "-")
        out.print(table)
        return 0
    data = api.get("/api/v1/workers" + (f"?selector={quote(args.selector, safe='=,')}" if args.selector else ""))
    if args.json:
        _print_json(data)
        return 0
    out.print(workers_table(data["workers"]))
    out.print(f"{data['online']} of {data['total']} worker(s) online")
    return 0


def cmd_gc(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    """--dry-run: what every worker's last GC sweep found; otherwise every online worker sweeps now, with removal."""
    before = api.get("/api/v1/gc")
    if args.dry_run:
        _print_json(before) if args.json else _print_gc(before, out)
        return 0
    last = {w["worker"]: w.get("swept_at") for w in before["workers"]}
    asked = api.post("/api/v1/gc", {"remove": True})["asked"]
    deadline = time.monotonic() + args.wait
    report = before
    while True:  # a worker's swept_at moves once its sweep ran (compared with its own earlier value: no clock skew)
        report = api.get("/api/v1/gc")
        pending = [w["worker"] for w in report["workers"] if w["worker"] in asked and w.get("swept_at") == last.get(w["worker"])]
        if not pending or args.no_wait or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if args.json:
        _print_json({**report, "asked": asked, "not_swept": [] if args.no_wait else pending})
    else:
        swept = [w for w in report["workers"] if w["worker"] in asked and w["worker"] not in pending]
        out.print(f"asked {len(asked)} worker(s) to sweep; removed {human_bytes(sum(w['removed_bytes'] for w in swept))} "
                  f"in {sum(w['removed'] for w in swept)} find(s)")
        if pending and not args.no_wait:
            err.print(f"[yellow]not swept within {args.wait:.0f} s: {_esc(', '.join(pending))}")
        _print_gc(report, out)
    return 1 if pending and not args.no_wait else 0


def _print_gc(report: dict, out: Console) -> None:
    table = _table("WORKER", "KIND", "PATH / DIGEST", "SIZE", "FIRST SEEN", "REMOVABLE")
    for w in report["workers"]:
        for f in w["finds"]:
            when = f"never ({f['note']})" if f.get("note") else human_time(f.get("removable_at"))
            table.add_row(w["worker"], f["kind"], _esc(f.get("digest") or f["path"]), human_bytes(f["bytes"]),
                          human_time(f["first_seen"]), _esc(when))
    out.print(table)
    never = [w["worker"] for w in report["workers"] if w.get("swept_at") is None]
    out.print(f"{report['finds']} find(s), {human_bytes(report['bytes'])}; removed so far "
              f"{human_bytes(report['removed_bytes_total'])}" + (f"; never swept: {', '.join(never)}" if never else ""))


def labels_text(worker: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in (worker.get("labels") or {}).items())


def disk_text(worker: dict) -> str:
    """`12.0 GB free of 100.0 GB` (of the model store's filesystem); an older agent reports no total."""
    free, total = worker.get("disk_free", worker.get("free_disk")), worker.get("disk_total")
    if free is None:
        return "-"
    return f"{human_bytes(free)} free" + (f" of {human_bytes(total)}" if total else "")


def workers_table(workers: list[dict]) -> Table:
    table = _table("ID", "TYPE", "ONLINE", "BACKENDS", "LABELS", "DISK", "GPUS", "MODELS", "LAST SEEN")
    for w in workers:
        table.add_row(w["id"], w["type"], "[green]yes" if w["online"] else "[red]no",
                      ", ".join(w.get("backends") or []), _esc(labels_text(w)) or "-", disk_text(w),
                      str(len(w.get("gpus") or [])), str(w["models"]), human_time(w.get("last_seen")))
    return table


def cmd_show(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    data = api.post("/api/v1/models/show", {"model": args.model})
    if args.json:
        _print_json(data)
        return 0
    details = data.get("details") or {}
    table = _table("", "", header=False)
    for key in ("format", "family", "parameter_size", "quantization_level"):
        if details.get(key):
            table.add_row(key.replace("_", " "), str(details[key]))
    table.add_row("described by", str(data.get("worker", "-")))
    out.print(f"[bold]{args.model}[/]")
    out.print(table)
    for section in ("parameters", "template", "system", "license"):
        if data.get(section):
            out.print(f"\n[bold]{section}[/]")
            out.print(_esc(str(data[section]).strip()[:2000]), highlight=False)
    return 0


def cmd_registry(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.registry_action == "list":
        data = api.get(API_PREFIX, format=args.format, source=args.source, name=args.name, limit=args.limit)
        if args.json:
            _print_json(data)
            return 0
        table = _table("ID", "MODEL", "FORMAT", "SIZE", "SOURCE", "CREATED")
        for m in data["models"]:
            table.add_row(m["id"], m.get("reference") or m["name"], m.get("format") or "-", human_bytes(m["size"]),
                          m["source"], human_time(m.get("created_at")))
        out.print(table)
        out.print(f"{len(data['models'])} of {data['total']} model(s)")
        return 0
    if not args.target:
        what = "FILE" if args.registry_action == "upload" else "ID"
        raise ClientError(f"eldric registry {args.registry_action} needs {what}")
    if args.registry_action == "delete":
        model = registry_model(api, args.target)
        api.call("DELETE", model_path(model["id"]))
        reference = model.get("reference") or f"{model['name']}:{model.get('version')}"
        _print_json({"deleted": model["id"], "reference": reference}) if args.json else (
            out.print(f"deleted {reference} ({model['id']})"))
        return 0
    return _upload(api, args, out, err)


_MODEL_ID = re.compile(r"[0-9a-f]{32}")  # the registry's model ids (eldric/cluster/registry_api.py ID_PATTERN)


def registry_model(api: Api, target: str) -> dict:
    """The registry model `target` names: its id, or `name:version`, or a name that has one version only.

    As `distribute --from registry` takes it; a name of several versions is refused listing them, since a
    delete must not guess."""
    if _MODEL_ID.fullmatch(target):
        return api.get(model_path(target))
    name, _, version = target.rpartition(":") if ":" in target else (target, "", "")
    found = api.get(API_PREFIX, name=name, limit=100)["models"]
    chosen = [m for m in found if not version or m.get("version") == version]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        versions = ", ".join(sorted(m.get("version") or "" for m in found))
        raise ClientError(f"no model {target!r} in the registry" + (f"; {name} has versions {versions}" if found else ""),
                          404)
    raise ClientError(f"{name} has {len(chosen)} versions ({', '.join(m.get('version') or '' for m in chosen)}); "
                      f"name one as {name}:<version>, or give the id")


def token_hint(api: Api) -> str:
    """What to do about a 401: the token is missing (none was given) or wrong."""
    state = "wrong" if api.session.headers.get("Authorization") else "missing"
    return (f"the API token is {state}: give the controller's ELDRIC_API_TOKEN with --token or "
            "$ELDRIC_API_TOKEN")


def _upload(api: Api, args: argparse.Namespace, out: Console, err: Console) -> int:
    path = Path(args.target)
    if not path.is_file():
        raise ClientError(f"{path}: no such file")
    state_dir = Path(args.state_dir or os.environ.get("ELDRIC_STATE_DIR") or Path.home() / ".eldric" / "cli")
    upload = ResumableUpload(api.call, path, name=args.name or default_name(path), version=args.version,
                             fmt=args.format, chunk_bytes=args.chunk_size, state_dir=state_dir, key_extra=api.base)
    bars = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(),
                    TransferSpeedColumn(), console=err if args.json or not out.is_terminal else out)
    with bars:
        task = bars.add_task(f"upload {path.name}", total=path.stat().st_size)
        try:
            model = upload.run(lambda done: bars.update(task, completed=done))
        except KeyboardInterrupt:
            bars.stop()
            err.print(f"interrupted at byte {upload.offset}; run the same command again to resume")
            return 130
    if args.json:
        _print_json(model)
    else:
        resumed = f" (resumed at byte {upload.resumed_at})" if upload.resumed_at else ""
        out.print(f"uploaded {model.get('reference') or model['name']} as {model['id']}: {model.get('format')}, "
                  f"{human_bytes(model['size'])}{resumed}")
    return 0


DEFAULT_REGISTRY = "http://127.0.0.1:8892"


def _transfer_bars(args: argparse.Namespace, out: Console, err: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(),
                    TransferSpeedColumn(), console=err if args.json or not out.is_terminal else out)


def cmd_export(client: OciClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    path = Path(args.output)
    with _transfer_bars(args, out, err) as bars:
        task = bars.add_task(f"export {path.name}", total=None)
        result = export_bundle(client, args.models, path, progress=lambda n: bars.advance(task, n),
                               on_plan=lambda total: bars.update(task, total=total))
    if args.json:
        _print_json(result)
        return 0
    for m in result["models"]:
        out.print(f"exported {m['name']} ({m['digest']}, {human_bytes(m['size'])})")
    out.print(f"wrote {path}: {len(result['models'])} model(s), {result['blobs']} blob(s), "
              f"{human_bytes(result['size'])}")
    return 0


def cmd_import(client: OciClient, args: argparse.Namespace, out: Console, err: Console) -> int:
    path = Path(args.bundle)
    if not path.is_file():
        raise ClientError(f"{path}: no such file")
    state_dir = Path(args.state_dir or os.environ.get("ELDRIC_STATE_DIR") or Path.home() / ".eldric" / "cli")
    with _transfer_bars(args, out, err) as bars:
        task = bars.add_task(f"import {path.name}", total=None)
        try:
            result = import_bundle(client, path, state_dir, name=args.name, chunk_bytes=args.chunk_size,
                                   progress=lambda n: bars.advance(task, n),
                                   on_plan=lambda total: bars.update(task, total=total))
        except BundleError as exc:
            raise ClientError(f"refused {path}: {exc}; no model was imported") from None
        except KeyboardInterrupt:
            bars.stop()
            err.print("interrupted; run the same command again to resume (finished blobs are not sent again)")
            return 130
    if args.json:
        _print_json(result)
        return 0
    for m in result["models"]:
        out.print(f"imported {m['name']} ({m['digest']}, {human_bytes(m['size'])})")
    resumed = f", resumed {human_bytes(result['resumed_bytes'])} already sent" if result["resumed_bytes"] else ""
    out.print(f"{path}: {len(result['models'])} model(s) into {client.base}: sent {result['sent_blobs']} blob(s) "
              f"({human_bytes(result['sent_bytes'])}), {result['skipped_blobs']} already there{resumed}")
    return 0


def _wrap_registry(command: Callable[[OciClient, argparse.Namespace, Console, Console], int]
                   ) -> Callable[[argparse.Namespace], int]:
    """A command against the data node's /v2/: the client from options or environment, errors as one line."""
    def run(args: argparse.Namespace) -> int:
        token = args.token if args.token is not None else (
            os.environ.get("ELDRIC_API_TOKEN") or os.environ.get("ELDRIC_CLUSTER_SECRET") or "")
        client = OciClient(args.registry or os.environ.get("ELDRIC_REGISTRY_URL") or DEFAULT_REGISTRY, token=token)
        out = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 160)
        err = Console(stderr=True, soft_wrap=True, highlight=False, width=None if sys.stderr.isatty() else 160)
        try:
            return command(client, args, out, err)
        except (ClientError, BundleError, OciClientError, OSError) as exc:
            hint = ("; give the cluster secret or the API token with --token (or $ELDRIC_API_TOKEN, "
                    "$ELDRIC_CLUSTER_SECRET)") if getattr(exc, "status", None) == 401 else ""
            err.print(f"[red]eldric {args.command}: {_esc(exc)}{hint}", highlight=False)
            return 1
        except KeyboardInterrupt:
            err.print("interrupted")
            return 130
    return run


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=None, help="the data node's registry (default $ELDRIC_REGISTRY_URL or "
                                                    f"{DEFAULT_REGISTRY})")
    p.add_argument("--token", default=None, help="bearer token (default $ELDRIC_API_TOKEN, then $ELDRIC_CLUSTER_SECRET)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of lines")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controller", default=None, help="controller URL (default $ELDRIC_CONTROLLER or "
                                                      f"{DEFAULT_CONTROLLER})")
    p.add_argument("--token", default=None, help="API token (default $ELDRIC_API_TOKEN)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true", help="print the job and return at once")


def _placement_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=None, help="how many workers get a copy (placement chooses them)")
    p.add_argument("--selector", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="only workers with these labels (type=inference|cloud too), e.g. zone=a")
    p.add_argument("--spread", default=None, metavar="LABEL", help="at most ceil(replicas / its values) copies per "
                                                                   "value of this label, e.g. zone")
    p.add_argument("--gpu", action="store_true", help="only workers with a GPU whose free memory holds the model")
    p.add_argument("--make-room", action="store_true", help="a worker where it does not fit evicts least recently "
                                                            "used models first (never pinned, loaded or in use)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the operator commands to `eldric`'s subcommands; `eldric registry` keeps serving without an action."""
    p = sub.add_parser("pull", help="pull a model to every inference/cloud worker, one progress bar per worker")
    p.add_argument("model")
    p.add_argument("--workers", help="comma list of worker ids (default: every inference and cloud worker)")
    p.add_argument("--deadline", type=int, default=None, help="fail workers not finished after this many seconds")
    _placement_options(p)
    _job_options(p)
    _common(p)
    p.set_defaults(func=_wrap(cmd_pull))

    p = sub.add_parser("jobs", help="list pull/distribute jobs, show one, or `jobs cancel ID`")
    p.add_argument("id", nargs="?", help="a job id, or `cancel`")
    p.add_argument("target", nargs="?", help="with `cancel`: the job to cancel")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--state", help="pending, running, completed, completed_with_skipped, failed or cancelled "
                                   "(the controller checks it)")
    p.add_argument("--kind", help="pull, distribute, delete, import, ...")
    p.add_argument("-f", "--follow", action="store_true", help="with ID: progress bars until the job ends")
    _common(p)
    p.set_defaults(func=_wrap(cmd_jobs))

    p = sub.add_parser("models", help="the cluster's models with coverage")
    _common(p)
    p.set_defaults(func=_wrap(cmd_models))

    p = sub.add_parser("status", help="is the cluster up: the controller answers and workers are online; "
                                      "prints the dashboard, docs and Flower addresses")
    p.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for it")
    p.add_argument("--expect-workers", type=int, default=0, help="up means at least this many workers online")
    p.add_argument("--flower", default=None, help="Flower's address, to show in the summary")
    p.add_argument("--upstream", default=None, help="the agents' ELDRIC_OLLAMA_REGISTRY, to show in the summary")
    _common(p)
    p.set_defaults(func=_wrap(cmd_status))

    p = sub.add_parser("workers", help="the cluster's workers, one worker's local models, or `workers remove ID`")
    p.add_argument("id", nargs="?", help="a worker id, or `remove`")
    p.add_argument("target", nargs="?", help="with `remove`: the decommissioned worker to forget")
    p.add_argument("--force", action="store_true", help="with `remove`: remove it even while it is online")
    p.add_argument("--selector", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="only workers with these labels, e.g. zone=a")
    _common(p)
    p.set_defaults(func=_wrap(cmd_workers))

    p = sub.add_parser("gc", help="garbage collection: --dry-run lists what every worker's last sweep found; "
                                  "without it every online worker sweeps now and removes what outlived its grace")
    p.add_argument("--dry-run", action="store_true", help="list the finds (kind, path or digest, size, first seen, "
                                                           "removable at), remove nothing")
    p.add_argument("--wait", type=float, default=60.0, help="wait up to this many seconds for the workers' sweeps")
    _job_options(p)
    _common(p)
    p.set_defaults(func=_wrap(cmd_gc))

    p = sub.add_parser("show", help="a model's details, parameters, template, system prompt, license")
    p.add_argument("model")
    _common(p)
    p.set_defaults(func=_wrap(cmd_show))

    p = sub.add_parser("distribute", help="copy a model to workers from the registry, a worker, a URL or Ollama")
    p.add_argument("model", help="model name; registry: id or name[:version]; url: the name to give it")
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                   help="registry, ollama, worker:<id>, or an http(s) URL")
    p.add_argument("--to", help="comma list of target workers (default: every inference and cloud worker)")
    p.add_argument("--source-token", help="URL source: bearer token (e.g. HuggingFace)")
    p.add_argument("--sha256", help="URL source: expected sha256:<hex>")
    p.add_argument("--filename", help="URL source: file name")
    _placement_options(p)
    _job_options(p)
    _common(p)
    p.set_defaults(func=_wrap(cmd_distribute))

    p = sub.add_parser("export", help="write models of the data node into a portable bundle (an OCI image layout tar)")
    p.add_argument("models", nargs="+", metavar="MODEL", help="Ollama names (qwen2.5:0.5b) or registry models (acme/house:v1)")
    p.add_argument("-o", "--output", required=True, help="the bundle to write (e.g. site.tar)")
    _registry_options(p)
    p.set_defaults(func=_wrap_registry(cmd_export))

    p = sub.add_parser("import", help="load a bundle (ours or any OCI image layout tar of Ollama models) into the data node")
    p.add_argument("bundle", help="the bundle (e.g. site.tar)")
    p.add_argument("--name", help="the model's name, for a one-model bundle that carries none (or to rename it)")
    p.add_argument("--chunk-size", type=_positive_int, default=64 << 20,
                   help="bytes per upload chunk (where a rerun resumes; default 64 MiB)")
    p.add_argument("--state-dir", default=None, help="where resume state is kept (default $ELDRIC_STATE_DIR or ~/.eldric/cli)")
    _registry_options(p)
    p.set_defaults(func=_wrap_registry(cmd_import))

    _extend_registry(sub.choices["registry"])


def _extend_registry(p: argparse.ArgumentParser) -> None:
    """`eldric registry list|upload FILE|delete ID` talk to the API; plain `eldric registry` serves as before."""
    p.usage = "eldric registry [list | upload FILE [--name N] | delete ID|NAME:VERSION] [options]"
    p.add_argument("registry_action", nargs="?", choices=["list", "upload", "delete"], action=_RegistryAction,
                   help="operator command against the controller (none: run the registry service)")
    p.add_argument("target", nargs="?", help="upload: the file; delete: the model id or name:version")
    p.add_argument("--name", help="list: filter by name; upload: model name (default: the file name)")
    p.add_argument("--version", help="upload: version (default: the next v<n>)")
    p.add_argument("--format", help="list: filter; upload: gguf, safetensors, lora or other (default: detected)")
    p.add_argument("--source", help="list: filter by source (upload, training, import)")
    p.add_argument("--limit", type=int, default=50, help="list: at most this many")
    p.add_argument("--chunk-size", type=int, default=64 << 20, help="upload: bytes per resumable chunk")
    p.add_argument("--state-dir", default=None, help="upload: where resume state is kept "
                                                     "(default $ELDRIC_STATE_DIR or ~/.eldric/cli)")
    _common(p)


class _RegistryAction(argparse.Action):
    """Given an action word, `eldric registry` runs the operator command instead of the service (its default)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        if values is not None:
            namespace.func = _REGISTRY_COMMAND


def _wrap(command: Callable[[Api, argparse.Namespace, Console, Console], int]) -> Callable[[argparse.Namespace], int]:
    """The command as an argparse `func`: the API client from options or environment, errors as one line."""
    def run(args: argparse.Namespace) -> int:
        api = Api(args.controller or os.environ.get("ELDRIC_CONTROLLER") or DEFAULT_CONTROLLER,
                  token=args.token if args.token is not None else os.environ.get("ELDRIC_API_TOKEN", ""))
        width = None if sys.stdout.isatty() else 160  # piped into a file or pager: do not squeeze to 80 columns
        out = Console(soft_wrap=True, highlight=False, width=width)
        err = Console(stderr=True, soft_wrap=True, highlight=False, width=None if sys.stderr.isatty() else 160)
        try:
            return command(api, args, out, err)
        except ClientError as exc:
            hint = f"; {token_hint(api)}" if exc.status == 401 else ""
            err.print(f"[red]eldric {args.command}: {_esc(exc)}{hint}", highlight=False)
            return 1
        except KeyboardInterrupt:
            err.print("interrupted")
            return 130
    return run


_REGISTRY_COMMAND = _wrap(cmd_registry)
