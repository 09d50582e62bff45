"""Issue 25: each worker's labels and disk bar (used / free, the eviction watermarks) on the Workers panel.

The first test is the whole path on real parts: an agent started with `--label` on a 64 MiB tmpfs, a fake
`nvidia-smi` on its PATH (no GPUs on CI), its record, the controller's view and the page. The second feeds
the page scripted answers (ScriptedApi) for what a live agent cannot show on demand: watermarks, a disk
over its high watermark, an older agent that reports no total.
"""

from __future__ import annotations

import os
import re
import stat
import sys

import pytest
from playwright.sync_api import expect

from testbed.disks import MountError, small_tmpfs
from tests.browser.test_dashboard_views import ScriptedApi, worker

pytestmark = pytest.mark.browser

GIB = 1 << 30


def fake_nvidia_smi(bindir) -> str:
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\nprint('0, NVIDIA H100 80GB HBM3, 81559, 80000')\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="module")
def dashboard_url(cluster):
    """A controller and one labelled agent whose data dir (and so its model store) is a 64 MiB tmpfs."""
    try:
        with small_tmpfs(cluster.root / "nodes" / "lab-1", "64m"):
            url = cluster.start_controller()
            cluster.start_worker("lab-1", ELDRIC_LABELS="zone=a,gpu=h100",
                                 PATH=fake_nvidia_smi(cluster.root / "fake-bin"))
            yield url + "/dashboard"
            cluster.stop()  # the agent lets go of the mount before it is unmounted
    except MountError as exc:
        pytest.skip(str(exc))


def test_a_labelled_agent_shows_its_labels_store_disk_and_gpus(cluster, dashboard_url, page):
    view = cluster.api("GET", "/api/v1/workers/lab-1").json()
    assert view["labels"] == {"gpu": "h100", "zone": "a"} and view["disk_total"] == 64 << 20
    assert view["gpus"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total": 81559 << 20,
                             "memory_free": 80000 << 20}]
    assert [w["id"] for w in cluster.api("GET", "/api/v1/workers?selector=zone=b").json()["workers"]] == []
    page.goto(dashboard_url)
    row = page.locator('#workers-table tr[data-worker="lab-1"]')
    expect(row.locator('[data-col="labels"] .chip')).to_have_text(["gpu=h100", "zone=a"])
    expect(row.locator('[data-col="disk"] .disk')).to_have_attribute("title", re.compile(r"free of 67\.1 MB$"))
    row.click()
    expect(page.locator('#worker-detail [data-fact="gpus"]')).to_have_text(
        "NVIDIA H100 80GB HBM3 (83.9 GB free of 85.5 GB)")


def test_the_disk_bar_shows_used_free_and_the_watermarks(dashboard_url, page):
    full = {**worker("full-1"), "labels": {"zone": "b"}, "disk_total": 100 * GIB, "disk_free": 5 * GIB,
            "free_disk": 5 * GIB, "disk_high_watermark": 90 * GIB, "disk_low_watermark": 80 * GIB, "gpus": []}
    roomy = {**worker("roomy-1"), "labels": {"zone": "a"}, "disk_total": 100 * GIB, "disk_free": 60 * GIB,
             "free_disk": 60 * GIB, "disk_high_watermark": None, "disk_low_watermark": None, "gpus": []}
    old = worker("old-1")  # an agent from before issue 25: free disk only
    ScriptedApi([full, roomy, old], []).install(page)
    page.goto(dashboard_url)
    bar = page.locator('#workers-table tr[data-worker="full-1"] [data-col="disk"]')
    expect(bar.locator(".disk")).to_have_attribute("data-disk", "over")
    expect(bar.locator(".disk-used")).to_have_attribute("style", "width: 95.0%")
    expect(bar.locator("[data-mark=high]")).to_have_attribute("style", "left: 90.0%")
    expect(bar.locator("[data-mark=low]")).to_have_attribute("style", "left: 80.0%")
    expect(bar.locator(".disk")).to_have_attribute(
        "title", "102.0 GB used, 5.37 GB free of 107.4 GB · high watermark 96.6 GB (90%) · low watermark 85.9 GB (80%)")
    roomy_bar = page.locator('#workers-table tr[data-worker="roomy-1"] [data-col="disk"]')
    expect(roomy_bar.locator(".disk")).to_have_attribute("data-disk", "ok")
    expect(roomy_bar.locator(".disk-mark")).to_have_count(0)
    expect(page.locator('#workers-table tr[data-worker="old-1"] [data-col="disk"]')).to_have_text("536.9 GB free")
    expect(page.locator('#workers-table tr[data-worker="old-1"] [data-col="labels"]')).to_have_text("–")
    page.locator("#workers-filter").fill("zone=a")
    expect(page.locator("#workers-table tbody tr")).to_have_count(1)
    expect(page.locator('#workers-table tr[data-worker="roomy-1"]')).to_have_count(1)
