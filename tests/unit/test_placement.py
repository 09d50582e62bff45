"""`place`: the placement rule over plain worker views (holders first, room after the reserve, GPU memory,
most room, fewest models, ties by id, spread per label value) and the reason for every refusal."""

from __future__ import annotations

import json

import pytest

from eldric.cluster.placement import HOLDS_IT, OFFLINE, human_size, place

GIB = 1 << 30
MODEL = "tiny:latest"


def worker(wid: str, *, free: int | None = 100 * GIB, models: list[str] | int = (), online: bool = True,
           type: str = "inference", gpus: list[dict] | None = None, **labels: str) -> dict:
    view = {"id": wid, "type": type, "online": online, "models": list(models) if not isinstance(models, int)
            else models, "labels": json.dumps(labels), "gpus": json.dumps(gpus or [])}
    if free is not None:
        view["free_disk"] = str(free)
    return view


def run(workers, *, size=GIB, replicas=2, selector=None, spread=None, reserve=GIB, needs_gpu=False):
    return place(workers, model=MODEL, size=size, replicas=replicas, selector=selector or {}, spread=spread,
                 reserve=reserve, needs_gpu=needs_gpu)


def test_holders_come_first_then_most_room():
    fleet = [worker("w1", free=50 * GIB), worker("w2", free=20 * GIB, models=[MODEL]),
             worker("w3", free=80 * GIB), worker("w4", free=10 * GIB)]
    got = run(fleet, replicas=2)
    assert got.ids == ["w2", "w3"]
    assert got.chosen[0] == ("w2", HOLDS_IT)
    assert "79.0 GiB free after the reserve" in got.chosen[1][1]
    assert got.rejected == []  # w1 and w4 were not needed, not refused


def test_a_holder_needs_no_room():
    got = run([worker("w1", free=0, models=[MODEL]), worker("w2", free=0)], replicas=2, size=5 * GIB)
    assert got.chosen == [("w1", HOLDS_IT)]
    assert got.rejected == [("w2", "no room: needs 5.0 GiB, has 0 B")]
    assert got.is_short(2)


def test_room_counts_after_the_reserve():
    fleet = [worker("w1", free=int(4.1 * GIB)), worker("w2", free=int(10.2 * GIB))]
    got = run(fleet, size=int(9.2 * GIB), reserve=GIB, replicas=2)
    assert got.ids == ["w2"]
    assert got.rejected == [("w1", "no room: needs 9.2 GiB, has 3.1 GiB")]


def test_fewest_models_then_id_break_ties():
    fleet = [worker("w3", models=["a", "b"]), worker("w2", models=["a"]), worker("w1", models=["a"]),
             worker("w0", models=["a", "b", "c"])]
    assert run(fleet, replicas=3).ids == ["w1", "w2", "w3"]
    # the same fleet in any order gives the same answer
    assert run(list(reversed(fleet)), replicas=3).ids == ["w1", "w2", "w3"]


def test_model_count_alone_with_a_holds_flag():
    fleet = [dict(worker("w1"), models=7), dict(worker("w2"), models=3), dict(worker("w3"), models=9, holds=True)]
    got = run(fleet, replicas=2)
    assert got.ids == ["w3", "w2"]


def test_offline_and_selector_reasons():
    fleet = [worker("w1", zone="a"), worker("w2", zone="b"), worker("w3", online=False, zone="a"),
             worker("w4"), worker("w5", type="cloud", zone="a")]
    got = run(fleet, replicas=3, selector={"zone": "a", "type": "inference"})
    assert got.ids == ["w1"]
    assert dict(got.rejected) == {"w2": "label zone=b", "w3": OFFLINE, "w4": "label zone unset",
                                  "w5": "type cloud"}


def test_gpu_memory_when_the_model_asks_for_one():
    small = [{"index": 0, "name": "T4", "memory_total": 16 * GIB, "memory_free": 2 * GIB}]
    big = [{"index": 0, "name": "H100", "memory_total": 80 * GIB, "memory_free": 70 * GIB}]
    fleet = [worker("w1", gpus=small, free=900 * GIB), worker("w2", gpus=big), worker("w3")]
    got = run(fleet, size=8 * GIB, replicas=3, needs_gpu=True)
    assert got.ids == ["w2"]
    assert dict(got.rejected) == {"w1": "no GPU memory: needs 8.0 GiB, has 2.0 GiB",
                                  "w3": "no GPU memory: needs 8.0 GiB, has 0 B"}
    assert run(fleet, size=8 * GIB, replicas=3).ids == ["w1", "w2", "w3"]  # no GPU asked: disk decides


def test_spread_at_most_ceil_n_over_zones_per_zone():
    fleet = [worker("a1", free=90 * GIB, zone="a"), worker("a2", free=80 * GIB, zone="a"),
             worker("a3", free=70 * GIB, zone="a"), worker("b1", free=10 * GIB, zone="b")]
    got = run(fleet, replicas=2, spread="zone")
    assert got.ids == ["a1", "b1"]
    assert ("a2", "spread: zone a has its 1") in got.rejected
    # 3 over two zones: at most 2 in a
    assert run(fleet, replicas=3, spread="zone").ids == ["a1", "a2", "b1"]
    # without spread the most room wins
    assert run(fleet, replicas=2).ids == ["a1", "a2"]


def test_a_full_zone_does_not_hold_back_the_others():
    fleet = [worker("a1", zone="a"), worker("a2", zone="a"), worker("b1", free=0, zone="b")]
    got = run(fleet, replicas=2, spread="zone")
    assert got.ids == ["a1", "a2"]
    assert ("b1", "no room: needs 1.0 GiB, has 0 B") in got.rejected


def test_a_spread_label_nobody_has_is_noted_not_refused():
    got = run([worker("w1"), worker("w2")], replicas=2, spread="rack")
    assert got.ids == ["w1", "w2"]
    assert got.notes and "rack" in got.notes[0]


def test_replicas_none_is_every_eligible_worker():
    fleet = [worker(f"w{i}") for i in range(5)] + [worker("off", online=False), worker("full", free=0)]
    got = run(fleet, replicas=None)
    assert got.ids == ["w0", "w1", "w2", "w3", "w4"]
    assert dict(got.rejected) == {"off": OFFLINE, "full": "no room: needs 1.0 GiB, has 0 B"}
    assert not got.is_short(None)


def test_unknown_disk_is_taken_last_on_trust():
    got = run([worker("old", free=None), worker("new", free=5 * GIB)], replicas=2)
    assert got.ids == ["new", "old"]
    assert "unknown" in got.chosen[1][1]


def test_nothing_fits():
    got = run([worker("w1", free=0), worker("w2", online=False)], replicas=1)
    assert got.chosen == [] and got.is_short(1) and len(got.rejected) == 2


@pytest.mark.parametrize("n,text", [(512, "512 B"), (48 << 20, "48.0 MiB"), (int(9.2 * GIB), "9.2 GiB"),
                                    (3 << 40, "3.0 TiB")])
def test_human_size(n, text):
    assert human_size(n) == text
