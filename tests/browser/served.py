"""What the controller adds to every job it serves: `final` on the job and on each worker's record, and
`job_final` beside a record's `job_state` (eldric/cluster/jobs/). Scripted answers pass through here, so the
page is fed what a controller would send; the dashboard derives nothing from state names."""

from __future__ import annotations

FINAL_JOB = ("completed", "completed_with_skipped", "failed", "cancelled")
FINAL_PART = ("completed", "failed", "skipped", "cancelled")


def record(r: dict) -> dict:
    out = {**r, "final": r.get("state") in FINAL_PART}
    if "job_state" in r:
        out["job_final"] = r["job_state"] in FINAL_JOB
    return out


def served(data: object) -> object:
    """A job, a job list, an event's data, with the finality fields a controller adds."""
    if isinstance(data, list):
        return [served(d) for d in data]
    if not isinstance(data, dict):
        return data
    out = dict(data)
    if "jobs" in out:
        out["jobs"] = served(out["jobs"])
    if isinstance(out.get("workers"), list) and all(isinstance(w, dict) and "worker" in w for w in out["workers"]):
        out["workers"] = [record(w) for w in out["workers"]]
    if "id" in out and "kind" in out and "state" in out:
        out["final"] = out["state"] in FINAL_JOB
    return out
