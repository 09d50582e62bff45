"""When to try again and how long to wait: the one rule every client, source and task uses.

Transient: a connection that failed, timed out or broke mid-body, and HTTP answers
408, 429 and 5xx. Everything else (4xx, digest mismatch, a name that does not
resolve to a model) fails at once: no retry can fix it.

Waits grow exponentially and carry "equal jitter" (half fixed, half random): when a
registry blinks, 200 workers retrying it do not all wake in the same instant, and
no wait is shorter than half its nominal value.
"""

from __future__ import annotations

import http.client
import random
from collections.abc import Callable

import requests
import urllib3

# raw.read() surfaces urllib3's and the socket's own errors, not requests' wrappers.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
    http.client.HTTPException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)

TRANSIENT_STATUSES = frozenset({408, 429})


def is_transient_status(status: int) -> bool:
    """408, 429 and every 5xx are worth another try later."""
    return status in TRANSIENT_STATUSES or 500 <= status <= 599


def is_transient_error(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


def backoff_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first): base·2^attempt capped, with equal jitter."""
    nominal = min(cap, base * (2 ** max(0, attempt)))
    return nominal / 2 + rand() * nominal / 2
