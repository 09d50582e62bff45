"""Structured logs: every record carries the job id and worker id it concerns.

`ELDRIC_LOG_FORMAT=json` gives one JSON object per line
(`{"ts", "level", "logger", "message", "job_id", "worker_id", "task", "task_id", "exc"}`);
the default `text` format appends `[job=… worker=…]` when known. The ids come from,
in order: `extra={"job_id": …, "worker_id": …}` on the call, the running Celery task
(its first argument is the job id for `models.*` tasks; the worker id is the Celery
hostname `<id>@eldric`), and the process default set by `set_process_fields`.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as BaseJsonFormatter

FIELDS = ("job_id", "worker_id", "task", "task_id")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"

_context: contextvars.ContextVar[dict] = contextvars.ContextVar("eldric_log_context", default={})  # noqa: B039  (never mutated: replaced by set())
_process_fields: dict[str, str] = {}
_celery_connected = False


def set_process_fields(**fields: str) -> None:
    """Defaults for every record of this process (e.g. the agent's worker id)."""
    _process_fields.update({k: v for k, v in fields.items() if v})


@contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Attach fields to every record logged inside the block (this thread/context only)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Sets job_id, worker_id, task, task_id (None when unknown) and a text `context` suffix."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, bound.get(name) or _process_fields.get(name))
        shown = [f"{label}={getattr(record, name)}" for name, label in (("job_id", "job"), ("worker_id", "worker"))
                 if getattr(record, name)]
        record.context = f" [{' '.join(shown)}]" if shown else ""
        return True


class JsonFormatter(BaseJsonFormatter):
    """python-json-logger with our field names: ts (UTC, ms), level, logger, message, the ids, exc."""

    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}" + "".join(f"{{{name}}}" for name in FIELDS), style="{",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger", "exc_info": "exc"},
            # `context` is the text format's suffix, not a field of its own.
            reserved_attrs=[*RESERVED_ATTRS, "context"], json_default=str)


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def format_from_env(env: dict[str, str] | None = None) -> str:
    """ELDRIC_LOG_FORMAT (text or json); read by entry points only."""
    env = os.environ if env is None else env
    fmt = (env.get("ELDRIC_LOG_FORMAT") or "text").strip().lower()
    make_formatter(fmt)  # validate
    return fmt


def configure_logging(level: str | int = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Root logging for a process: one stream handler with our formatter and context filter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)


class ContextSuffixFormatter(logging.Formatter):
    """Wraps another formatter (e.g. Celery's) and appends ` [job=… worker=…]` to the first line."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        suffix = getattr(record, "context", "")
        if not suffix:
            return text
        first, sep, rest = text.partition("\n")
        return f"{first}{suffix}{sep}{rest}"


def apply_to_logger(logger: logging.Logger, fmt: str) -> None:
    """Give an already configured logger's handlers our filter and the context in their format."""
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        elif not isinstance(handler.formatter, (ContextSuffixFormatter, JsonFormatter)):
            handler.setFormatter(ContextSuffixFormatter(handler.formatter or logging.Formatter()))


JOB_TASK_PREFIX = "models."  # tasks whose first argument is a job id


def task_fields(task_name: str, task_id: str | None, args: list | tuple | None, hostname: str | None) -> dict:
    """The log fields of a running Celery task."""
    fields = {"task": task_name, "task_id": task_id}
    if task_name.startswith(JOB_TASK_PREFIX) and args and isinstance(args[0], str):
        fields["job_id"] = args[0]
    if hostname:
        fields["worker_id"] = hostname.split("@", 1)[0]
    return fields


def connect_celery_signals() -> None:
    """Bind task fields while each task runs, and set our filter/format on Celery's loggers.

    Celery configures a worker's logging itself; these receivers run right after it
    (at process start), which is when the format is read from ELDRIC_LOG_FORMAT.
    """
    global _celery_connected
    if _celery_connected:
        return
    _celery_connected = True
    from celery import signals

    tokens: dict[str, contextvars.Token] = {}

    @signals.celeryd_init.connect(weak=False)
    def _worker_identity(sender=None, **_kw) -> None:
        if sender:
            set_process_fields(worker_id=str(sender).split("@", 1)[0])

    @signals.after_setup_logger.connect(weak=False)
    @signals.after_setup_task_logger.connect(weak=False)
    def _format(logger=None, **_kw) -> None:
        if logger is not None:
            apply_to_logger(logger, format_from_env())

    @signals.task_prerun.connect(weak=False)
    def _bind(task_id=None, task=None, args=None, **_kw) -> None:
        hostname = getattr(getattr(task, "request", None), "hostname", None)
        fields = task_fields(getattr(task, "name", "") or "", task_id, args, hostname)
        tokens[task_id] = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})

    @signals.task_postrun.connect(weak=False)
    def _unbind(task_id=None, **_kw) -> None:
        token = tokens.pop(task_id, None)
        if token is not None:
            try:
                _context.reset(token)
            except ValueError:  # set in another context (should not happen with the thread pool)
                _context.set({})
