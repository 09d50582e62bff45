"""The slow-client rules of eldric/web/client_limits.py, without a server."""

from __future__ import annotations

import pytest

from eldric.core.settings import SettingsError
from eldric.web.client_limits import BodyClock, ClientLimits, HttpLimitsSettings, SlowBodyError, WaitingHeads, is_head_complete


@pytest.mark.parametrize(("buf", "start", "whole"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, True),
    (b"GET / HTTP/1.1\r\nHost: x\r\n", 0, False),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody", 0, True),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 26, True),  # the end straddles what was searched before
    (b"\r\n\r", 0, False),
])
def test_a_head_is_whole_at_its_empty_line(buf: bytes, start: int, whole: bool) -> None:
    assert is_head_complete(buf, start) is whole


def test_the_longest_waiting_connection_of_an_address_goes_first() -> None:
    heads = WaitingHeads(per_address=2)
    assert heads.add("a1", "10.0.0.1", 0.0) == []
    assert heads.add("b1", "10.0.0.2", 0.5) == []
    assert heads.add("a2", "10.0.0.1", 1.0) == []
    assert heads.add("a3", "10.0.0.1", 2.0) == ["a1"]  # another address's connection is never touched
    heads.remove("a2")
    assert heads.add("a4", "10.0.0.1", 3.0) == []
    assert len(heads) == 3
    assert heads.waited_since(2.5) == ["b1", "a3"]
    assert heads.take_all() == ["a4"] and len(heads) == 0


def test_a_body_must_keep_ahead_of_the_minimum_rate_and_never_idle_too_long() -> None:
    clock = BodyClock(ClientLimits(body_idle_seconds=10, body_min_rate=1000), now=0.0)
    assert clock.seconds_left(0.0) == 10
    clock.add(5000, 4.0)  # 5 s of credit at 1000 bytes/s, but idle counts from the last bytes
    assert clock.seconds_left(4.0) == 10
    clock.add(100_000, 5.0)
    assert clock.seconds_left(5.0) == 10  # idle bound
    trickle = BodyClock(ClientLimits(body_idle_seconds=10, body_min_rate=1000), now=0.0)
    for t in range(1, 12):
        trickle.add(1, float(t))  # one byte a second: never idle, far below the rate
    assert trickle.seconds_left(11.0) < 0
    assert isinstance(trickle.error(), TimeoutError) and trickle.error().code == 408
    assert issubclass(SlowBodyError, OSError)


def test_settings_read_the_variables_and_refuse_bad_values() -> None:
    limits = HttpLimitsSettings.from_env({"ELDRIC_HTTP_HEAD_SECONDS": "3", "ELDRIC_HTTP_BODY_MIN_RATE": "4K"}).client_limits()
    assert limits == ClientLimits(head_seconds=3, body_min_rate=4096)
    with pytest.raises(SettingsError, match="ELDRIC_HTTP_HEADS_PER_ADDRESS"):
        HttpLimitsSettings.from_env({"ELDRIC_HTTP_HEADS_PER_ADDRESS": "0"})
