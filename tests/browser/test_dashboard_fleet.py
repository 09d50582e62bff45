"""Issue 13, the dashboard at 1,000 workers: the coverage heat map and the summary of a job with many targets.

The API is scripted (test_dashboard_views.py's ScriptedApi); only the page comes from a real controller.
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.browser.test_dashboard_views import MB, ScriptedApi, job, model, progress, record, worker

pytestmark = pytest.mark.browser

FIRST_RENDER_LIMIT_MS = 2000
NAMES = [f"node-{j:04d}" for j in range(1000)]


def _offline(j: int) -> bool:
    return j % 10 == 3


def _fleet_models() -> list[dict]:
    """100 models: model i (i < 70) is missing on every worker j with (i + j) % 10 == 0, the rest are everywhere;
    on model-010 a tenth of its holders report another digest."""
    models = []
    for i in range(100):
        holders = [n for j, n in enumerate(NAMES) if i >= 70 or (i + j) % 10]
        models.append(model(f"model-{i:03d}:q4", holders, NAMES))
    odd = models[10]
    other = [w for w in odd["workers"] if w.endswith("1")]
    odd["digests"] = {"sha256:" + "ab" * 32: [w for w in odd["workers"] if w not in other], "sha256:" + "cd" * 32: other}
    odd["consistent"] = False
    return models


class FleetApi(ScriptedApi):
    """ScriptedApi that also keeps the bodies of the distribute requests the page sends."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.distributed: list[dict] = []

    def answer(self, route) -> None:
        if route.request.method == "POST" and route.request.url.endswith("/api/v1/models/distribute"):
            self.distributed.append(route.request.post_data_json)
        super().answer(route)


@pytest.fixture(scope="module")
def dashboard_url(cluster) -> str:
    return cluster.start_controller() + "/dashboard"


def _cell_point(page, row: int, col: int) -> tuple[float, float]:
    """The centre of a heat-map cell on the screen, the map scrolled so that the cell is in view."""
    canvas = page.locator("#coverage-canvas")
    width, height = (float(canvas.get_attribute(a)) for a in ("data-cell-width", "data-cell-height"))
    page.evaluate("""([x, y]) => {
        const map = document.getElementById('coverage-map');
        map.scrollIntoView({ block: 'nearest' });
        map.scrollLeft = x; map.scrollTop = y;
    }""", [max(0, col * width - 200), max(0, row * height - 100)])
    box = canvas.bounding_box()
    return box["x"] + (col + 0.5) * width, box["y"] + (row + 0.5) * height


def _hover(page, row: int, col: int):
    page.mouse.move(*_cell_point(page, row, col))
    tip = page.locator("#coverage-tip")
    expect(tip).to_be_visible()
    return tip


def test_heat_map_of_1000_workers_and_100_models(dashboard_url, page):
    models = _fleet_models()
    api = FleetApi([worker(n, online=not _offline(j)) for j, n in enumerate(NAMES)], models).install(page)
    missing = next(m for m in models if m["name"] == "model-005:q4")["missing"]
    api.started["distribute"] = job("d" * 32, "distribute", "model-005:q4", "pending", [record(w) for w in missing],
                                    source="worker")
    started = time.monotonic()
    page.goto(dashboard_url)
    canvas = page.locator("#coverage-canvas")
    expect(canvas).to_have_attribute("data-rows", "100", timeout=10_000)
    wall = time.monotonic() - started
    drawn = page.evaluate("performance.getEntriesByName('eldric:coverage-drawn')[0].startTime")
    elements = page.evaluate("document.getElementsByTagName('*').length")
    print(f"\n1,000 workers x 100 models: heat map drawn {drawn:.0f} ms after navigation start "
          f"({wall:.2f} s wall clock from goto), {elements} elements")
    assert drawn <= FIRST_RENDER_LIMIT_MS, drawn
    assert elements < 3000, elements  # one canvas, tables of 25 rows
    expect(canvas).to_have_attribute("data-cols", "1000")
    expect(page.locator("#coverage-stats")).to_have_text("100 models × 1000 eligible workers · 70 partly covered")
    expect(page.locator("#coverage-columns")).to_contain_text("1000 workers")
    expect(page.locator("#coverage-axis .col-label")).to_have_count(0)  # too narrow for names: the tooltip says
    expect(page.locator("#coverage-table tbody tr")).to_have_count(25)

    # Rows: the partly covered first (model-000 ... model-069), then by name; columns: the workers in order.
    for row, col, state, text in ((5, 3, "has", "node-0003: has it (worker offline)"), (5, 5, "missing", "node-0005: missing"),
                                  (7, 13, "offline", "node-0013: missing, worker offline"),
                                  (10, 21, "differs", "node-0021: has another digest"), (80, 999, "has", "node-0999: has it")):
        tip = _hover(page, row, col)
        expect(tip).to_have_attribute("data-model", f"model-{row:03d}:q4")
        expect(tip).to_have_attribute("data-worker", NAMES[col])
        expect(tip).to_have_attribute("data-state", state)
        expect(tip).to_contain_text(f"model-{row:03d}:q4")
        expect(tip).to_contain_text(text)

    # Clicking a row asks first; accepted, it distributes to exactly the workers missing the model.
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.mouse.click(*_cell_point(page, 5, 40))
    page.wait_for_timeout(300)
    assert len(asked) == 1 and api.distributed == [], (asked, api.distributed)
    assert "model-005:q4" in asked[0] and "100 workers missing it" in asked[0], asked
    page.once("dialog", lambda d: d.accept())
    page.mouse.click(*_cell_point(page, 5, 40))
    expect(page.locator('#coverage-table tr.bars-row[data-bars-for="model-005:q4"]')).to_be_visible()
    assert len(api.distributed) == 1, api.distributed
    body = api.distributed[0]
    assert body["model"] == "model-005:q4" and body["workers"] == missing
    assert len(body["workers"]) == 100 and all(int(w[-4:]) % 10 == 5 for w in body["workers"])
    assert body["source"]["type"] == "worker" and body["source"]["worker"] not in missing

    # The worker filter narrows the columns.
    page.fill("#coverage-workers", "node-09")
    expect(canvas).to_have_attribute("data-cols", "100")
    expect(page.locator("#coverage-columns")).to_contain_text("100 workers")
    _hover(page, 1, 9)
    expect(page.locator("#coverage-tip")).to_have_attribute("data-worker", "node-0909")
    expect(page.locator("#coverage-tip")).to_have_attribute("data-state", "missing")


def test_heat_map_of_a_small_cluster_labels_every_column(dashboard_url, page):
    names = ["gpu-a.dc1.example.internal", "gpu-b.dc1.example.internal", "gpu-c.dc1.example.internal"]
    models = [model("tiny:latest", names[:1], names), model("big:latest", names, names)]
    api = FleetApi([worker(n, online=n != names[2]) for n in names], models).install(page)
    api.started["distribute"] = job("e" * 32, "distribute", "tiny:latest", "pending", [record(w) for w in names[1:]])
    page.goto(dashboard_url)
    labels = page.locator("#coverage-axis .col-label")
    expect(labels).to_have_text(["gpu-a", "gpu-b", "gpu-c"])  # the shared domain is said once
    expect(page.locator("#coverage-columns")).to_contain_text("(names end in .dc1.example.internal)")
    canvas = page.locator("#coverage-canvas")
    expect(canvas).to_have_attribute("data-rows", "2")
    box = canvas.bounding_box()
    for i in range(3):
        label = labels.nth(i).bounding_box()
        centre = label["x"] + label["width"] / 2
        assert box["x"] + i * box["width"] / 3 <= centre <= box["x"] + (i + 1) * box["width"] / 3, (i, label, box)
    tip = _hover(page, 0, 2)
    expect(tip).to_have_attribute("data-model", "tiny:latest")
    expect(tip).to_contain_text(f"{names[2]}: missing, worker offline")
    tip = _hover(page, 1, 1)
    expect(tip).to_have_attribute("data-state", "has")
    asked: list[str] = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.mouse.click(*_cell_point(page, 1, 1))  # big is everywhere: nothing to offer
    page.wait_for_timeout(300)
    assert asked == []
    page.mouse.click(*_cell_point(page, 0, 0))
    expect(page.locator('#coverage-table tr.bars-row[data-bars-for="tiny:latest"] .bar-row')).to_have_count(2)
    assert [b["workers"] for b in api.distributed] == [names[1:]]
    assert len(asked) == 1 and "(1 of them offline)" in asked[0], asked


def _big_job(job_id: str, state: str = "running") -> tuple[dict, list[int], list[str], list[str]]:
    """1,000 targets: 400 completed, 30 failed (two reasons), 565 pulling at spread percents, 5 pending.
    Returns the job, the expected histogram, the slowest 20 and the failed workers."""
    t = time.time()
    records, percents = [], {}
    for j, name in enumerate(NAMES):
        if j < 400:
            records.append(record(name, "completed", t, completed=10, total=10, percent=100.0))
        elif j < 430:
            records.append(record(name, "failed", t, error="disk full" if j % 2 else "connection reset"))
        elif j < 435:
            records.append(record(name, "pending", t))
            percents[name] = 0.0
        else:
            completed = (j * 37) % 1000
            records.append(progress(name, t, completed, 1000))
            percents[name] = round(100 * completed / 1000, 1)
    bins = [0] * 10
    for r in records:
        if r["state"] != "failed":
            bins[min(9, int((100.0 if r["state"] == "completed" else r["percent"]) // 10))] += 1
    slowest = sorted(percents, key=lambda n: (percents[n], n))[:20]
    return job(job_id, "pull", "big:latest", state, records), bins, slowest, NAMES[400:430]


def test_jobs_panel_summarises_a_job_of_1000_targets(dashboard_url, page):
    big, bins, slowest, failed = _big_job("b" * 32)
    ScriptedApi([worker(n) for n in NAMES[:3]], [], jobs=[big]).install(page)
    page.goto(dashboard_url)
    row = page.locator(f'#jobs-list li.job[data-job="{"b" * 32}"]')
    expect(row.locator(".job-counts")).to_contain_text("400 completed · 30 failed · 565 pulling · 5 pending")
    expect(row.locator(".dot")).to_have_count(0)  # no dot per worker: the histogram instead
    hbins = row.locator(".histogram .hbin")
    expect(hbins).to_have_count(10)
    assert [int(c) for c in hbins.evaluate_all("bs => bs.map(b => b.dataset.count)")] == bins
    assert sum(bins) == 970
    expect(row.locator(".failures .failure")).to_have_count(2)
    row.locator("details.per-worker summary").click()
    slow = row.locator('[data-list="slowest"] .bar-row')
    expect(slow).to_have_count(20)
    assert slow.evaluate_all("rs => rs.map(r => r.dataset.worker)") == slowest
    expect(row.locator(".bars-head").first).to_have_text("slowest 20 of 570 workers under way")
    bad = row.locator('[data-list="failed"] .bar-row')
    expect(bad).to_have_count(30)
    assert sorted(bad.evaluate_all("rs => rs.map(r => r.dataset.worker)")) == failed
    expect(row.locator(".bar-row")).to_have_count(50)  # nothing else listed
    assert page.evaluate("document.getElementsByTagName('*').length") < 3000


def test_pull_panel_summarises_1000_targets(dashboard_url, page):
    big, bins, slowest, failed = _big_job("a" * 32)
    api = ScriptedApi([worker(n) for n in NAMES], [])
    api.started["pull"] = big
    api.install(page)
    page.goto(dashboard_url)
    page.fill("#pull-model", "big")
    page.get_by_role("button", name="Pull to All Workers").click()
    expect(page.locator("#pull-summary")).to_contain_text(
        "1000 workers: 400 completed · 30 failed · 565 pulling · 5 pending")
    bars = page.locator("#pull-bars")
    assert [int(c) for c in bars.locator(".histogram .hbin").evaluate_all("bs => bs.map(b => b.dataset.count)")] == bins
    assert bars.locator('[data-list="slowest"] .bar-row').evaluate_all("rs => rs.map(r => r.dataset.worker)") == slowest
    bad = bars.locator('[data-list="failed"] .bar-row')
    expect(bad).to_have_count(30)
    assert sorted(bad.evaluate_all("rs => rs.map(r => r.dataset.worker)")) == failed
    expect(bars.locator(".bar-row")).to_have_count(50)  # the slowest and the failed, nothing else


def test_bars_show_the_upstream_and_peer_split_and_the_agents_rate(dashboard_url, page):
    """Issue 14: each worker's bar shows how much came from peers (the striped end) and from upstream."""
    t = time.time()
    workers = [
        progress("inf-1", t, 8 * MB, 16 * MB, upstream_bytes=8 * MB, peer_bytes=0, peers={}, rate=2_500_000.0,
                 alone="swarm board unavailable: Error 111 connecting to 10.0.0.5:6379. Connection refused."),
        progress("inf-2", t, 8 * MB, 16 * MB, upstream_bytes=2 * MB, peer_bytes=6 * MB,
                 peers={"inf-1": 4 * MB, "inf-3": 2 * MB}, bad_peers={"inf-4": "range 3 failed its sha256 check"},
                 rate=5_000_000.0),
        record("inf-3", "completed", t, completed=16 * MB, total=16 * MB, percent=100.0, upstream_bytes=0,
               peer_bytes=16 * MB, peers={"inf-1": 16 * MB}),
    ]
    pull = job("f" * 32, "pull", "big", "running", workers)
    ScriptedApi([worker(w) for w in ("inf-1", "inf-2", "inf-3")], [], jobs=[pull]).install(page)
    page.goto(dashboard_url)
    row = page.locator(f'#jobs-list li.job[data-job="{"f" * 32}"]')
    row.locator("details.per-worker summary").click()
    second = row.locator('.bar-row[data-worker="inf-2"]')
    expect(second.locator(".split")).to_have_text("2.00 MB upstream, 6.00 MB from 2 peers (dropped inf-4: bad bytes)")
    assert second.locator(".peer-part").evaluate("e => e.style.width") == "75%"
    expect(second.locator(".rate")).to_have_text(re.compile(r"^5\.00 MB/s"))  # the agent's own figure
    expect(row.locator('.bar-row[data-worker="inf-1"] .split')).to_have_text(
        "8.00 MB upstream, 0 B from 0 peers (without peers: swarm board unreachable)")
    assert row.locator('.bar-row[data-worker="inf-1"] .peer-part').evaluate("e => e.style.width") == "0%"
    expect(row.locator('.bar-row[data-worker="inf-3"] .split')).to_contain_text("16.0 MB from 1 peer")
