"""Upstream update detection's cluster side (fakeredis, a hand-written registry session): the beat task's
work records each mirrored tag in eldric:mirror:updates, /metrics counts the moved ones, the model view
shows them, and a failed check keeps the previous answer."""

from __future__ import annotations

import fakeredis
import pytest
import requests

from controller.metrics import read_snapshot, render
from eldric.cluster import keys
from eldric.cluster.mirror_updates import (MirrorCheckError, check_mirror_updates, mirror_updates_by_model,
                                           read_updates)

MOVED = {"name": "library/qwen2.5:0.5b", "digest": "sha256:" + "a" * 64, "upstream_digest": "sha256:" + "b" * 64,
         "update_available": True, "error": None}
SAME = {"name": "acme/tiny:v1", "digest": "sha256:" + "c" * 64, "upstream_digest": "sha256:" + "c" * 64,
        "update_available": False, "error": None}


class FakeResponse:
    def __init__(self, status: int, body: dict) -> None:
        self.status_code, self.body, self.reason = status, body, "x"

    def json(self) -> dict:
        return self.body

    def iter_content(self, chunk_size: int = 1):
        yield b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}'

    def close(self) -> None:
        pass


class FakeSession:
    def __init__(self, answer: FakeResponse | Exception) -> None:
        self.answer, self.calls = answer, []

    def post(self, url: str, headers: dict, timeout) -> FakeResponse:
        self.calls.append((url, headers))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def test_a_check_records_every_tag_and_counts_the_moved_ones(r) -> None:
    session = FakeSession(FakeResponse(200, {"checked": [MOVED, SAME]}))
    summary = check_mirror_updates(r, "http://data:8892/", "s3cret", session=session, now=100.0)
    assert summary == {"checked": 2, "updates_available": 1}
    assert session.calls == [("http://data:8892/api/v1/model-registry/mirror/check",
                              {"Authorization": "Bearer s3cret"})]
    stored = read_updates(r)
    assert stored["library/qwen2.5:0.5b"] == {"digest": MOVED["digest"], "upstream_digest": MOVED["upstream_digest"],
                                             "update_available": True, "error": None, "checked_at": 100.0}
    assert stored["acme/tiny:v1"]["update_available"] is False
    assert mirror_updates_by_model(r) == {"qwen2.5:0.5b": {"digest": MOVED["digest"],
                                                           "upstream_digest": MOVED["upstream_digest"],
                                                           "checked_at": 100.0}}
    assert 'eldric_mirror_updates_available 1.0' in render(read_snapshot(r, stale_after=120)).decode()


def test_each_check_replaces_the_last(r) -> None:
    check_mirror_updates(r, "http://data:8892", session=FakeSession(FakeResponse(200, {"checked": [MOVED]})))
    check_mirror_updates(r, "http://data:8892", session=FakeSession(FakeResponse(200, {"checked": []})))
    assert not r.exists(keys.MIRROR_UPDATES)
    assert 'eldric_mirror_updates_available 0.0' in render(read_snapshot(r, stale_after=120)).decode()


@pytest.mark.parametrize("answer", [FakeResponse(401, {}), requests.ConnectionError("refused")])
def test_a_failed_check_raises_and_keeps_the_previous_answer(r, answer) -> None:
    check_mirror_updates(r, "http://data:8892", session=FakeSession(FakeResponse(200, {"checked": [MOVED]})))
    with pytest.raises(MirrorCheckError):
        check_mirror_updates(r, "http://data:8892", session=FakeSession(answer))
    assert list(read_updates(r)) == ["library/qwen2.5:0.5b"]
