"""The beat schedule read from the environment, and the `eldric beat` / `eldric flower` commands."""

from __future__ import annotations

import json
import os

import pytest

from eldric import cli
from eldric.cluster.queues import MAINTENANCE_QUEUE
from eldric.cluster.schedules import REDBEAT_PREFIX, RETRY_SECONDS, ScheduleSettings, beat_config, beat_schedule, redbeat_client


def test_defaults_schedule_every_job_on_the_maintenance_queue():
    schedule = beat_schedule(ScheduleSettings.from_env({}))
    assert {name: (e["task"], e["schedule"]) for name, e in schedule.items()} == {
        "inventory-sync": ("inventory.sync_all", 300.0),
        "reap-stale-jobs": ("maintenance.reap_stale_jobs", 30.0),
        "pins-reconcile": ("pins.reconcile", 60.0),
        "pins-check-updates": ("pins.check_updates", 3600.0),
        "clean-partials": ("maintenance.clean_partials_all", 3600.0),
        "sweep-debris": ("maintenance.sweep_debris_all", 3600.0),
        "gc-sweep": ("maintenance.gc_sweep_all", 3600.0),
        "evict": ("maintenance.evict_all", 60.0),
        "mirror-check-updates": ("mirror.check_updates", 3600.0),
    }
    for entry in schedule.values():
        assert entry["options"] == {"queue": MAINTENANCE_QUEUE, "expires": entry["schedule"]}
        assert json.loads(json.dumps(entry["args"])) == entry["args"]  # JSON primitives only


def test_environment_sets_periods_and_the_arguments_the_tasks_receive():
    env = {"ELDRIC_REAP_SECONDS": "5", "ELDRIC_STALE_WORKER_SECONDS": "45", "ELDRIC_JOB_DEADLINE_SECONDS": "900",
           "ELDRIC_PIN_RETRY_SECONDS": "7", "ELDRIC_PIN_RECONCILE_SECONDS": "2.5",
           "ELDRIC_OFFLINE_GRACE_SECONDS": "60"}
    schedule = beat_schedule(ScheduleSettings.from_env(env))
    assert schedule["reap-stale-jobs"]["schedule"] == 5.0 and schedule["reap-stale-jobs"]["args"] == [45.0, 60.0]
    assert schedule["pins-reconcile"]["schedule"] == 2.5
    assert schedule["pins-check-updates"]["args"] == [900.0, 7.0]
    assert schedule["pins-reconcile"]["args"] == [900.0, 7.0, 60.0, 1 << 30]  # + offline grace, placement reserve
    assert beat_schedule(ScheduleSettings.from_env({}))["clean-partials"]["args"] == [86400.0]
    cleanup = beat_schedule(ScheduleSettings.from_env({"ELDRIC_PARTIAL_CLEAN_SECONDS": "600",
                                                       "ELDRIC_PARTIAL_MAX_AGE_SECONDS": "7200"}))["clean-partials"]
    assert (cleanup["schedule"], cleanup["args"]) == (600.0, [7200.0])


def test_zero_disables_a_job():
    schedule = beat_schedule(ScheduleSettings.from_env({"ELDRIC_PIN_UPDATE_SECONDS": "0"}))
    assert "pins-check-updates" not in schedule and "pins-reconcile" in schedule


@pytest.mark.parametrize("env, message", [
    ({"ELDRIC_REAP_SECONDS": "soon"}, r"reap_seconds \(ELDRIC_REAP_SECONDS\): Input should be a valid number.*'soon'"),
    ({"ELDRIC_INVENTORY_SYNC_SECONDS": "-1"}, r"ELDRIC_INVENTORY_SYNC_SECONDS\): Input should be greater than or equal to 0"),
    ({"ELDRIC_BEAT_LOCK_SECONDS": "1"}, r"ELDRIC_BEAT_LOCK_SECONDS\): Input should be greater than or equal to 3"),
])
def test_bad_values_fail_at_start_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        ScheduleSettings.from_env(env)


def test_beat_config_uses_redbeat_with_a_lock_under_our_prefix():
    conf = beat_config("redis://h:1/0", ScheduleSettings.from_env({"ELDRIC_BEAT_LOCK_SECONDS": "30"}))
    assert conf["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert conf["redbeat_redis_url"] == conf["broker_url"] == "redis://h:1/0"
    assert conf["redbeat_key_prefix"] == REDBEAT_PREFIX == "eldric:redbeat:"
    assert conf["redbeat_lock_timeout"] == 30
    # each tick renews the lock, so beat must wake well inside the lock's lifetime
    assert conf["beat_max_loop_interval"] <= conf["redbeat_lock_timeout"] / 3


def test_beat_refuses_a_bad_schedule_before_starting(monkeypatch, capsys):
    monkeypatch.setenv("ELDRIC_REAP_SECONDS", "never")
    assert cli.main(["beat", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert "ELDRIC_REAP_SECONDS" in capsys.readouterr().err


def test_beat_refuses_an_unknown_log_format(monkeypatch, capsys):
    monkeypatch.setenv("ELDRIC_LOG_FORMAT", "xml")
    assert cli.main(["beat"]) == 2
    assert "log format" in capsys.readouterr().err


@pytest.mark.parametrize("url, broker, options", [
    ("redis://:pw@h:6379/0", "redis://:pw@h:6379/0", {}),
    ("sentinel://:pw@h1,h2/0?master=eldric", "sentinel://:pw@h1:26379/0;sentinel://:pw@h2:26379/0",
     {"master_name": "eldric"}),
])
def test_flower_runs_in_process_on_our_celery_app_with_the_broker_out_of_argv_and_env(monkeypatch, url, broker, options):
    from celery import _state
    from celery.bin.celery import celery as celery_command

    # The app made here becomes the current and default one: both come back after the test.
    monkeypatch.setattr(_state, "default_app", _state.default_app)
    monkeypatch.setattr(_state._tls, "current_app", getattr(_state._tls, "current_app", None))
    calls = []
    monkeypatch.setattr(celery_command, "main", lambda args, prog_name: calls.append(args) or 0)
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://elsewhere:1/0")
    assert cli.main(["flower", "--port", "5600", "--redis-url", url, "--", "--url_prefix=flower"]) == 0
    assert calls == [["flower", "--port=5600", "--address=127.0.0.1", "--url_prefix=flower"]]
    assert "CELERY_BROKER_URL" not in os.environ
    conf = _state.get_current_app().conf
    assert conf.broker_url == broker
    assert conf.broker_transport_options == {"visibility_timeout": 3600, **options}
    assert conf.worker_send_task_events is True


@pytest.mark.parametrize("command", ["flower", "beat"])
def test_flower_and_beat_refuse_a_sentinel_url_without_master(capsys, command):
    assert cli.main([command, "--redis-url", "sentinel://h1/0"]) == 2
    assert "?master=NAME" in capsys.readouterr().err


def test_beat_gives_redbeat_a_client_that_retries_about_the_lock_time():
    client = redbeat_client("sentinel://h1/0?master=eldric", ScheduleSettings(lock_seconds=12))
    assert client.connection_pool.service_name == "eldric"
    assert client.get_retry().get_retries() * RETRY_SECONDS == 12


def test_flower_defaults_to_port_5555_on_loopback():
    args = cli.build_parser().parse_args(["flower"])
    s = cli.FlowerSettings.from_env({}, flower_host=args.host, flower_port=args.port)
    assert (s.flower_port, s.flower_host, args.flower_args) == (5555, "127.0.0.1", [])


def test_flower_flags_win_over_the_environment():
    args = cli.build_parser().parse_args(["flower", "--port", "6000"])
    env = {"ELDRIC_FLOWER_PORT": "7000", "ELDRIC_FLOWER_HOST": "0.0.0.0"}
    s = cli.FlowerSettings.from_env(env, flower_host=args.host, flower_port=args.port)
    assert (s.flower_port, s.flower_host) == (6000, "0.0.0.0")


def test_mirror_check_asks_the_registry_beat_is_told_of():
    default = beat_schedule(ScheduleSettings.from_env({}))["mirror-check-updates"]
    assert default["args"] == ["http://127.0.0.1:8892"]
    entry = beat_schedule(ScheduleSettings.from_env({"ELDRIC_MIRROR_UPDATE_SECONDS": "120",
                                                     "ELDRIC_REGISTRY_URL": "http://data-1:8892"}))["mirror-check-updates"]
    assert entry["schedule"] == 120.0 and entry["args"] == ["http://data-1:8892"]
    assert "mirror-check-updates" not in beat_schedule(ScheduleSettings.from_env({"ELDRIC_MIRROR_UPDATE_SECONDS": "0"}))
