"""Errors that say what to do, and words a user can trust (issue 12), over real agents.

Failures no retry can mend (a registry name that does not resolve, https to a plain-http
registry) end the job at once with the setting to change, though the agents' retries are
slow here (a retried failure would take over 7 s). Expected failures log one WARNING line
with the job and worker, never a traceback.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest

from testbed.oci_registry import OCIRegistry
from testbed.processes import wait_until

pytestmark = pytest.mark.integration

SLOW_RETRIES = {"ELDRIC_RETRY_BASE_SECONDS": "5", "ELDRIC_RETRY_MAX_SECONDS": "10", "ELDRIC_PULL_RETRIES": "2"}


@pytest.fixture(scope="module")
def live(cluster, tiny_model):
    cluster.start_controller()
    cluster.start_worker("ok-w", "inference")
    cluster.start_worker("data-w", "data")
    return cluster


def _pull(live, model: str, worker: str) -> tuple[dict, float]:
    started = time.monotonic()
    job = live.api("POST", "/api/v1/models/pull", json={"model": model, "workers": [worker]})
    assert job.status_code == 202, job.text
    final = live.wait_job(job.json()["id"], timeout=30)
    return final, time.monotonic() - started


def test_https_against_a_plain_http_mirror_fails_at_once_naming_the_setting(live):
    netloc = urlsplit(live.oci.url).netloc
    live.start_worker("tls-w", "inference", ELDRIC_OLLAMA_REGISTRY=f"https://{netloc}", **SLOW_RETRIES)
    final, took = _pull(live, "tiny", "tls-w")
    assert final["state"] == "failed"
    assert final["workers"][0]["error"] == (f"{netloc} speaks plain http, not https; "
                                            f"set ELDRIC_OLLAMA_REGISTRY to http://{netloc}")
    assert took < 5


def test_a_registry_name_that_does_not_resolve_fails_at_once_naming_the_setting(live):
    try:
        socket.getaddrinfo("registry.nonexistent.invalid", 443)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this machine's resolver answers {exc} (a silent name server is retried, by design)")
    live.start_worker("dns-w", "inference", ELDRIC_OLLAMA_REGISTRY="https://registry.nonexistent.invalid",
                      **SLOW_RETRIES)
    final, took = _pull(live, "tiny", "dns-w")
    assert final["state"] == "failed"
    assert final["workers"][0]["error"] == ("cannot resolve registry.nonexistent.invalid: no DNS or no internet; "
                                            "set ELDRIC_OLLAMA_REGISTRY to a reachable mirror")
    assert took < 5


def test_model_not_found_logs_one_warning_line_and_no_traceback(live, workdir):
    # The controller finds `tiny` at its upstream; this agent's mirror (an empty registry) has nothing, as
    # when an agent is configured apart from the controller or upstream lost the tag since the check.
    empty = OCIRegistry(workdir / "empty-oci").start()
    try:
        log = live.start_worker("nf-w", "inference", ELDRIC_OLLAMA_REGISTRY=empty.url)
        # Its start-up lines (the empty-secret warning among them) come after it registers: past them first.
        def started() -> str | None:
            text = log.log_path.read_text(errors="replace")
            return text if "effective configuration" in text else None
        before = wait_until(started, timeout=20, message=f"the agent's start-up lines\n{log.log_tail()}")
        final, _ = _pull(live, "tiny", "nf-w")
    finally:
        empty.stop()
    assert final["state"] == "failed"
    job_id = final["id"]

    def new_lines() -> list[str] | None:
        lines = log.log_path.read_text(errors="replace")[len(before):].splitlines()
        return lines if any("WARNING" in line for line in lines) else None
    lines = wait_until(new_lines, timeout=10, message=f"the warning line\n{log.log_tail()}")
    warnings = [line for line in lines if "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert f"job={job_id}" in warnings[0] and "worker=nf-w" in warnings[0] and "not found" in warnings[0]
    text = "\n".join(lines)
    assert "Traceback" not in text and "raised unexpected" not in text and " ERROR " not in text


def test_a_worker_shows_its_upstream_registry_and_absolute_directories(live):
    ok = live.api("GET", "/api/v1/workers/ok-w").json()
    assert ok["upstream_registry"] == live.oci.url
    assert ok["data_dir"] == str(live.root / "nodes" / "ok-w") and ok["data_dir"].startswith("/")
    assert ok["backends"] == ["ollama"]
    assert all(d["models_dir"].startswith("/") for d in ok["backend_details"].values() if d.get("models_dir"))
    data = live.api("GET", "/api/v1/workers/data-w").json()
    assert data["backends"] == [] and data["backend_details"] == {}


def test_pulled_bytes_count_network_bytes_by_source_kind(live, tiny_model):
    def pulled() -> dict[str, float]:
        text = live.api("GET", "/metrics").text
        return {line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("eldric_pulled_bytes{")}
    before = pulled()
    assert set(before) == {"ollama", "registry", "url", "peer", "other"}
    final, _ = _pull(live, "tiny", "ok-w")
    assert final["state"] == "completed"
    size = sum(b["size"] for b in [tiny_model["manifest"]["config"], *tiny_model["manifest"]["layers"]])
    first = pulled()
    assert first["ollama"] - before["ollama"] == size
    final, _ = _pull(live, "tiny", "ok-w")  # on the node already: nothing crosses the network
    assert final["state"] == "completed"
    assert pulled()["ollama"] == first["ollama"]
