"""eldric.transfer.retry: the one transient rule and the jittered backoff."""

from __future__ import annotations

import pytest
import requests

from eldric.transfer.retry import backoff_delay, is_transient_error, is_transient_status


@pytest.mark.parametrize("status, transient", [(408, True), (429, True), (500, True), (503, True), (599, True),
                                               (400, False), (401, False), (404, False), (416, False), (200, False)])
def test_transient_statuses(status: int, transient: bool) -> None:
    assert is_transient_status(status) is transient


def test_transient_errors() -> None:
    assert is_transient_error(requests.ConnectionError("reset"))
    assert is_transient_error(TimeoutError())
    assert not is_transient_error(ValueError("bad manifest"))


def test_backoff_bounds_and_cap() -> None:
    assert backoff_delay(0, base=1, cap=10, rand=lambda: 0.0) == 0.5
    assert backoff_delay(0, base=1, cap=10, rand=lambda: 1.0) == 1.0
    assert backoff_delay(3, base=1, cap=10, rand=lambda: 1.0) == 8.0
    assert backoff_delay(10, base=1, cap=10, rand=lambda: 1.0) == 10.0
    assert backoff_delay(10, base=1, cap=10, rand=lambda: 0.0) == 5.0
