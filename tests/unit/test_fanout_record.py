"""What a worker's progress record says about where its bytes came from (worker_agent/fanout.py)."""

from __future__ import annotations

from types import SimpleNamespace

import fakeredis

from eldric.transfer.swarm import BoardUnavailableError, Swarm
from worker_agent.fanout import Fanout


class GoneBoard:
    me = "w1"

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise BoardUnavailableError("Error 111 connecting to 10.0.0.5:6379. Connection refused.")
        return call


def fanout() -> Fanout:
    settings = SimpleNamespace(peer_fanout=True, download_parts=4, stall_seconds=30.0, max_download_rate=0,
                               cluster_secret="", max_peer_upload_rate=0, peer_range_base_seconds=10.0,
                               peer_min_rate=256 << 10)
    agent = SimpleNamespace(settings=settings, redis=fakeredis.FakeRedis(), worker_id="w1")
    return Fanout(agent, SimpleNamespace(job_id="j1", min_interval=0.5))


def test_a_blob_fetched_without_the_board_says_why_in_the_record() -> None:
    fan = fanout()
    assert "alone" not in fan.fields()
    swarm = Swarm(GoneBoard(), lambda *a: None)
    assert swarm.join(64 << 20, 4 << 20) is None
    fan._swarms.append(swarm)
    assert fan.fields()["alone"] == "swarm board unavailable: Error 111 connecting to 10.0.0.5:6379. Connection refused."


def test_a_job_whose_swarms_all_reached_the_board_has_no_alone() -> None:
    fan = fanout()
    fan._swarms.append(Swarm(SimpleNamespace(me="w1"), lambda *a: None))
    fields = fan.fields()
    assert "alone" not in fields and fields["upstream_bytes"] == 0
