"""Structured logs: JSON lines and text suffixes carrying job and worker ids."""

from __future__ import annotations

import io
import json
import logging

import pytest

from eldric import logging_setup
from eldric.logging_setup import (
    ContextFilter,
    JsonFormatter,
    apply_to_logger,
    bind,
    format_from_env,
    task_fields,
)


@pytest.fixture
def capture():
    """A private logger whose lines land in a buffer."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    logger = logging.getLogger("eldric.test-ops-logging")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    yield logger, buf
    logger.handlers = []


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def test_json_lines_carry_the_ids_given_as_extra(capture):
    logger, buf = capture
    apply_to_logger(logger, "json")
    logger.warning("failed %s", "x", extra={"job_id": "j1", "worker_id": "w1"})
    entry = json.loads(lines(buf)[0])
    assert entry["message"] == "failed x" and entry["level"] == "WARNING"
    assert (entry["job_id"], entry["worker_id"], entry["task"]) == ("j1", "w1", None)
    assert entry["logger"] == "eldric.test-ops-logging" and entry["ts"].endswith("Z")


def test_bound_context_applies_inside_the_block_only_and_extra_wins(capture):
    logger, buf = capture
    apply_to_logger(logger, "json")
    with bind(job_id="j2", worker_id="w2"):
        logger.info("inside")
        logger.info("explicit", extra={"job_id": "j3"})
    logger.info("outside")
    inside, explicit, outside = (json.loads(line) for line in lines(buf))
    assert (inside["job_id"], inside["worker_id"]) == ("j2", "w2")
    assert (explicit["job_id"], explicit["worker_id"]) == ("j3", "w2")
    assert outside["job_id"] is None


def test_text_format_appends_the_ids_and_keeps_the_original_format(capture):
    logger, buf = capture
    apply_to_logger(logger, "text")
    apply_to_logger(logger, "text")  # idempotent
    logger.info("plain")
    logger.info("about a job", extra={"job_id": "j1", "worker_id": "w1"})
    assert lines(buf) == ["[INFO] plain", "[INFO] about a job [job=j1 worker=w1]"]


def test_exceptions_are_one_json_line(capture):
    logger, buf = capture
    apply_to_logger(logger, "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it broke")
    [line] = lines(buf)
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_process_fields_are_the_default(capture):
    logger, buf = capture
    apply_to_logger(logger, "json")
    logging_setup.set_process_fields(worker_id="node-9")
    try:
        logger.info("hello")
    finally:
        logging_setup._process_fields.clear()
    assert json.loads(lines(buf)[0])["worker_id"] == "node-9"


@pytest.mark.parametrize("name, args, hostname, expected", [
    ("models.pull", ["job1", "tiny:latest"], "gpu01@eldric",
     {"task": "models.pull", "task_id": "t", "job_id": "job1", "worker_id": "gpu01"}),
    ("pins.reconcile", [600.0, 60.0], "gpu01@eldric", {"task": "pins.reconcile", "task_id": "t", "worker_id": "gpu01"}),
    ("models.pull", [], None, {"task": "models.pull", "task_id": "t"}),
])
def test_task_fields(name, args, hostname, expected):
    assert task_fields(name, "t", args, hostname) == expected


def test_configure_logging_installs_one_handler(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buf = io.StringIO()
    try:
        logging_setup.configure_logging("INFO", "json", stream=buf)
        logging.getLogger("eldric.x").info("hi", extra={"job_id": "j"})
        assert json.loads(buf.getvalue())["job_id"] == "j"
        assert any(isinstance(f, ContextFilter) for f in root.handlers[0].filters)
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers, root.level = saved


@pytest.mark.parametrize("env, fmt", [({}, "text"), ({"ELDRIC_LOG_FORMAT": "JSON"}, "json"),
                                      ({"ELDRIC_LOG_FORMAT": "text"}, "text")])
def test_format_from_env(env, fmt):
    assert format_from_env(env) == fmt


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="log format"):
        format_from_env({"ELDRIC_LOG_FORMAT": "xml"})
