"""The Models tab over scripted API answers: states a live cluster cannot produce on demand (an install in
progress, exact transfer rates, reasons 500 characters long, names 60 characters long).

Only the page itself comes from a real controller; every /api/v1 call is answered by `ScriptedApi`
through Playwright's routing, in the shapes the API documents (README "Live progress", controller/schemas.py).
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from tests.browser.served import served

pytestmark = pytest.mark.browser

MB = 1_000_000
LONG_MODEL = "registry.example.com/team-vision/llava-phi3-instruct-extended:q4_K_M-2024"
LONG_WORKER = "gpu-node-rack07-slot03-a100x8-frankfurt.dc2.example.internal"
LONG_REASON = ("cannot resolve registry.ollama.ai: no DNS or no internet; set ELDRIC_OLLAMA_REGISTRY to a reachable "
               "mirror. " + "The resolver said: temporary failure in name resolution after 3 attempts. " * 6).strip()


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(served(data))}\n\n"


def record(worker: str, state: str = "pending", at: float = 0.0, **kw) -> dict:
    return {"worker": worker, "state": state, "status": kw.pop("status", state), "percent": 0.0, "completed": 0,
            "total": 0, "error": None, "updated_at": at, **kw}


def progress(worker: str, at: float, completed: int, total: int, status: str = "downloading model.gguf", **kw) -> dict:
    return record(worker, "pulling", at, status=status, completed=completed, total=total,
                  percent=round(100 * completed / total, 1), **kw)


def job(job_id: str, kind: str, model: str, state: str, workers: list[dict], source: str = "ollama", **kw) -> dict:
    now = time.time()
    return {"id": job_id, "kind": kind, "model": model, "source": source, "state": state, "created_at": now,
            "deadline_at": now + 600, "finished_at": None, "targets": [w["worker"] for w in workers],
            "options": kw.pop("options", {}), "summary": {}, "workers": workers, **kw}


def worker(wid: str, online: bool = True) -> dict:
    return {"id": wid, "type": "inference", "address": "http://10.0.0.1:8890", "backends": ["ollama"],
            "backend_details": {}, "free_disk": 500 << 30, "online": online, "last_seen": time.time(),
            "registered_at": time.time(), "hostname": wid, "models": 1}


def model(name: str, holders: list[str], everyone: list[str]) -> dict:
    missing = [w for w in everyone if w not in holders]
    return {"name": name, "size": 12 * MB, "format": "gguf", "digest": "sha256:" + "ab" * 32, "modified_at": time.time(),
            "workers": holders, "missing": missing, "coverage": round(100 * len(holders) / len(everyone), 1),
            "consistent": True, "digests": {"sha256:" + "ab" * 32: holders}, "details": {}}


class ScriptedApi:
    """Answers every /api/v1 call of the page from plain data; `streams[job id]` is a job's event stream text."""

    def __init__(self, workers: list[dict], models: list[dict], jobs: list[dict] | None = None,
                 registry: list[dict] | None = None, worker_models: list[dict] | None = None) -> None:
        self.workers, self.models, self.jobs, self.registry = workers, models, jobs or [], registry or []
        self.worker_models = worker_models  # what /api/v1/workers/{id}/models answers (default: LONG_MODEL)
        self.streams: dict[str, str] = {}
        self.started: dict[str, dict] = {}  # "pull" | "distribute" -> the job a POST answers with

    def install(self, page) -> ScriptedApi:
        page.route(re.compile(r"^https?://[^/]+/api/v1/"), self.answer)
        return self

    def job(self, job_id: str) -> dict | None:
        return next((j for j in [*self.jobs, *self.started.values()] if j["id"] == job_id), None)

    def answer(self, route) -> None:
        url = urlsplit(route.request.url)
        path, query = url.path, parse_qs(url.query)
        if path == "/api/v1/workers":
            route.fulfill(json={"workers": self.workers, "total": len(self.workers),
                                "online": sum(w["online"] for w in self.workers)})
        elif path == "/api/v1/models":
            eligible = len(self.workers)
            route.fulfill(json={"models": self.models, "total": len(self.models), "eligible_workers": eligible})
        elif path == "/api/v1/models/pull-jobs":
            limit, offset = int(query.get("limit", ["10"])[0]), int(query.get("offset", ["0"])[0])
            route.fulfill(json=served({"jobs": self.jobs[offset:offset + limit], "total": len(self.jobs),
                                       "limit": limit, "offset": offset}))
        elif m := re.fullmatch(r"/api/v1/models/pull-jobs/(\w+)/events", path):
            found = self.job(m[1])
            if found is None:
                route.fulfill(status=404, json={"code": 404, "status": "Not Found", "message": "no such job"})
                return
            body = self.streams.get(m[1]) or ("retry: 3000\n" + sse("snapshot", found) + (
                sse("done", found) if found["state"] in ("completed", "failed") else ""))
            route.fulfill(status=200, body=body, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        elif m := re.fullmatch(r"/api/v1/models/pull-jobs/(\w+)", path):
            found = self.job(m[1])
            route.fulfill(status=200 if found else 404, json=served(found) if found else {"code": 404, "message": "no such job"})
        elif path in ("/api/v1/models/pull", "/api/v1/models/distribute") and route.request.method == "POST":
            route.fulfill(status=202, json=served(self.started[path.rsplit("/", 1)[1]]))
        elif path == "/api/v1/model-registry":
            route.fulfill(json={"models": self.registry, "total": len(self.registry), "limit": 25, "offset": 0})
        elif m := re.fullmatch(r"/api/v1/workers/([^/]+)(/models)?", path):
            found = next((w for w in self.workers if w["id"] == m[1]), None)
            if m[2] and self.worker_models is not None:
                route.fulfill(json={"worker": m[1], "models": self.worker_models})
            elif m[2]:
                route.fulfill(json={"worker": m[1], "models": [{"name": LONG_MODEL, "digest": "sha256:" + "ab" * 32,
                                                                "size": 12 * MB, "modified_at": time.time(),
                                                                "format": "gguf", "backend": "ollama"}]})
            else:
                route.fulfill(status=200 if found else 404, json=found or {"code": 404, "message": "no such worker"})
        else:
            route.fulfill(status=404, json={"code": 404, "status": "Not Found", "message": f"not scripted: {path}"})


@pytest.fixture(scope="module")
def dashboard_url(cluster) -> str:
    """A controller for the page and its static files; the API answers come from ScriptedApi."""
    return cluster.start_controller() + "/dashboard"


def _failed_job(names: list[str]) -> dict:
    records = [record(w, "failed", 1.0, error=LONG_REASON if i < len(names) - 2 else "model not found",
                      finished_at=1.0) for i, w in enumerate(names)]
    return job("f" * 32, "pull", "qwen2.5:0.5b", "failed", records)


def test_failure_reasons_are_in_the_job_row_wrapped_and_open_on_click(dashboard_url, page):
    names = [f"w-{i:03d}" for i in range(150)]
    ScriptedApi([worker(n) for n in names[:3]], [], jobs=[_failed_job(names)]).install(page)
    page.goto(dashboard_url)
    row = page.locator(f'#jobs-list li.job[data-job="{"f" * 32}"]')
    failures = row.locator(".failures .failure")
    expect(failures).to_have_count(2)  # grouped by reason, without a click
    expect(row.locator("details.per-worker")).not_to_have_attribute("open", "")
    common, rare = failures.nth(0), failures.nth(1)
    expect(common.locator(".on")).to_have_text("on w-000, w-001, w-002, w-003 and 144 more")
    expect(rare.locator(".reason")).to_have_text("model not found")
    expect(rare.locator(".on")).to_have_text("on w-148, w-149")
    reason = common.locator(".reason")
    expect(reason).to_have_attribute("title", LONG_REASON)  # the whole text on hover
    line = float(reason.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)"))
    closed = reason.bounding_box()
    card = page.locator("#jobs-panel").bounding_box()
    assert closed["height"] <= 3 * line + 2, (closed, line)  # three lines, wrapped ...
    assert closed["x"] + closed["width"] <= card["x"] + card["width"]  # ... inside the card, not clipped at its edge
    assert reason.evaluate("e => e.scrollWidth <= e.clientWidth")
    reason.click()
    expect(reason).to_have_attribute("aria-expanded", "true")
    assert reason.bounding_box()["height"] > 4 * line  # the whole reason
    row.evaluate("li => { li.dataset.old = 'yes'; }")
    page.wait_for_function("() => !document.querySelector('#jobs-list li.job[data-old]')", timeout=15_000)  # next poll
    expect(row.locator(".failures .reason").first).to_have_attribute("aria-expanded", "true")  # still open
    assert page.evaluate("document.activeElement.classList.contains('reason')")


def test_every_job_kind_shows_bars_per_worker_with_its_phase(dashboard_url, page):
    t = time.time()
    jobs = [
        job("1" * 32, "import", "house", "running", [progress("registry", t, 3 * MB, 12 * MB, status="downloading house.gguf")],
            source="url"),
        job("2" * 32, "delete", "tiny:latest", "running", [record("inf-1", "completed", t, status="deleted"),
                                                            record("inf-2", "pulling", t, status="deleting tiny:latest")]),
        job("3" * 32, "distribute", "house:1", "running", [
            progress("inf-1", t, 6 * MB, 12 * MB), progress("inf-2", t, 12 * MB, 12 * MB, status="installing"),
            record("inf-3", "completed", t, completed=12 * MB, total=12 * MB, percent=100.0)], source="registry"),
        job("4" * 32, "pull", "tiny", "completed", [record(w, "completed", t, completed=MB, total=MB, percent=100.0)
                                                    for w in ("inf-1", "inf-2", "inf-3")]),
    ]
    ScriptedApi([worker(w) for w in ("inf-1", "inf-2", "inf-3")], [], jobs=jobs).install(page)
    page.goto(dashboard_url)
    expect(page.locator("#jobs-list li.job")).to_have_count(4)
    for j in jobs:
        row = page.locator(f'#jobs-list li.job[data-job="{j["id"]}"]')
        expect(row).to_have_attribute("data-kind", j["kind"])
        row.locator("details.per-worker summary").click()
        expect(row.locator(".bars .bar-row")).to_have_count(len(j["workers"]))
    distribute = page.locator(f'#jobs-list li.job[data-job="{"3" * 32}"]')
    installing = distribute.locator('.bar-row[data-worker="inf-2"]')
    expect(installing).to_have_attribute("data-phase", "installing")
    expect(installing.locator(".pct")).to_have_text("installing")  # not "100.0%" while files are installed
    expect(installing.locator(".bar")).to_have_attribute("aria-valuetext", "installing, 100.0% transferred")
    expect(distribute.locator(".job-counts")).to_contain_text("1 completed · 1 installing · 1 pulling")
    expect(distribute.locator(".job-bytes")).to_have_text("83.3% of 36.0 MB")
    deleting = page.locator(f'#jobs-list li.job[data-job="{"2" * 32}"] .bar-row[data-worker="inf-2"]')
    expect(deleting).to_have_attribute("data-phase", "deleting")
    expect(deleting.locator(".pct")).to_have_text("deleting")
    expect(page.locator(f'#jobs-list li.job[data-job="{"1" * 32}"] .bar-row[data-worker="registry"] .pct')).to_have_text("25.0%")


def test_registry_distribute_shows_bars_under_its_row_with_the_installing_phase(dashboard_url, page):
    t = time.time()
    house = {"id": "h" * 32, "name": "house", "version": "1", "reference": "house:1", "format": "gguf", "size": 12 * MB,
             "source": "upload", "created_at": t}
    workers = ("inf-1", "inf-2", "inf-3")
    started = job("d" * 32, "distribute", "house:1", "pending", [record(w, at=t) for w in workers], source="registry")
    api = ScriptedApi([worker(w) for w in workers], [], registry=[house])
    api.started["distribute"] = started
    api.streams[started["id"]] = "retry: 3000\n" + sse("snapshot", started) + sse("progress", {"workers": [
        {**progress("inf-1", t + 1, 6 * MB, 12 * MB), "job_state": "running"},
        {**progress("inf-2", t + 1, 12 * MB, 12 * MB, status="installing"), "job_state": "running"},
        {**record("inf-3", "completed", t + 1, completed=12 * MB, total=12 * MB, percent=100.0, status="success"),
         "job_state": "running"}]})
    api.install(page)
    page.goto(dashboard_url)
    row = page.locator(f'#registry-table tr[data-model-id="{house["id"]}"]')
    row.get_by_role("button", name="Distribute").click()
    bars = page.locator(f'#registry-table tr.bars-row[data-bars-for="{house["id"]}"] .bar-row')
    expect(bars).to_have_count(3)
    expect(page.locator('#registry-table .bar-row[data-worker="inf-2"]')).to_have_attribute("data-phase", "installing")
    expect(page.locator('#registry-table .bar-row[data-worker="inf-2"] .pct')).to_have_text("installing")
    expect(page.locator('#registry-table .bar-row[data-worker="inf-1"] .pct')).to_have_text("50.0%")
    expect(row.locator(".job-status")).to_have_text("running: 1 completed · 1 installing · 1 pulling")
    expect(row.get_by_role("button", name="Distribute")).to_be_focused()  # still on the pressed control


def test_rate_and_time_left_per_worker_and_per_job(dashboard_url, page):
    """Computed from successive records: bytes over `updated_at`; the job's rate is the sum, its time left the longest."""
    t = float(int(time.time()))  # whole seconds: the expected figures are exact
    started = job("r" * 32, "pull", "big:latest", "running",
                  [progress("inf-1", t, 0, 10 * MB), progress("inf-2", t, 0, 10 * MB)])
    api = ScriptedApi([worker("inf-1"), worker("inf-2")], [])
    api.started["pull"] = started
    api.streams[started["id"]] = "retry: 3000\n" + sse("snapshot", started) + "".join(
        sse("progress", {"workers": [{**progress("inf-1", t + s, s * MB, 10 * MB), "job_state": "running"},
                                     {**progress("inf-2", t + s, 2 * s * MB, 10 * MB), "job_state": "running"}]})
        for s in (1, 2))
    api.install(page)
    page.goto(dashboard_url)
    page.fill("#pull-model", "big")
    page.get_by_role("button", name="Pull to All Workers").click()
    one, two = (page.locator(f'#pull-bars li[data-worker="{w}"]') for w in ("inf-1", "inf-2"))
    expect(one.locator(".rate")).to_have_text("1.00 MB/s")
    expect(one.locator(".left")).to_have_text("8 s left")
    expect(two.locator(".rate")).to_have_text("2.00 MB/s")
    expect(two.locator(".left")).to_have_text("3 s left")
    expect(page.locator("#pull-summary .job-rate")).to_have_text("3.00 MB/s")
    expect(page.locator("#pull-summary .job-left")).to_have_text("8 s left")


def _line_breaks(page, locator) -> list[str]:
    """The character before each line break inside the element (its rendered text, line by line)."""
    return locator.evaluate("""el => {
        const chars = [], walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
        for (let n = walker.nextNode(); n; n = walker.nextNode()) {
            for (let i = 0; i < n.data.length; i += 1) {
                const r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + 1);
                const rect = r.getClientRects()[0];
                if (rect) chars.push([n.data[i], rect.top]);
            }
        }
        const breaks = [];
        for (let i = 1; i < chars.length; i += 1) if (chars[i][1] > chars[i - 1][1] + 2) breaks.push(chars[i - 1][0]);
        return breaks;
    }""")


def test_phone_width_has_no_horizontal_overflow_and_names_wrap_between_parts(dashboard_url, browser):
    t = time.time()
    names = [LONG_WORKER, "inf-2", "inf-3"]
    running = job("9" * 32, "distribute", LONG_MODEL, "running", [
        progress(LONG_WORKER, t, 6 * MB, 12 * MB), progress("inf-2", t, 12 * MB, 12 * MB, status="installing"),
        record("inf-3", "failed", t, error=LONG_REASON)], source="registry")
    house = {"id": "h" * 32, "name": LONG_MODEL.split(":")[0], "version": "q4_K_M-2024", "reference": LONG_MODEL,
             "format": "gguf", "size": 12 * MB, "source": "upload", "created_at": t}
    api = ScriptedApi([worker(n) for n in names], [model(LONG_MODEL, names[:1], names), model("tiny:latest", names, names)],
                      jobs=[running, _failed_job(names)], registry=[house])
    api.started["pull"] = running
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        api.install(page)
        page.goto(dashboard_url)
        tabs = page.locator("nav.tabs a")
        hrefs = [tabs.nth(i).get_attribute("href") for i in range(tabs.count())]
        assert hrefs, "no tabs"
        for href in hrefs:
            page.goto(urlsplit(dashboard_url)._replace(path=href).geturl())
            expect(page.locator("#workers-table tbody tr")).to_have_count(3)
            expect(page.locator("#jobs-list li.job")).to_have_count(2)
            _assert_fits(page, "loaded")
            for summary in page.locator("#jobs-list details.per-worker summary").all():
                summary.click()
            expect(page.locator("#jobs-list .bar-row")).to_have_count(6)
            page.locator(f'#workers-table tr[data-worker="{LONG_WORKER}"]').click()
            expect(page.locator("#worker-detail h3")).to_contain_text("online")
            page.fill("#pull-model", "anything")
            page.get_by_role("button", name="Pull to All Workers").click()
            expect(page.locator("#pull-bars li")).to_have_count(3)
            page.locator("#models-panel details.raw summary").click()
            _assert_fits(page, "with every panel open")
        for where in (f'#coverage-table tr[data-model="{LONG_MODEL}"] td.name',
                      f'#registry-table tr[data-model-id="{"h" * 32}"] td.name',
                      f'#workers-table tr[data-worker="{LONG_WORKER}"] td.name'):
            breaks = _line_breaks(page, page.locator(where))
            assert breaks and set(breaks) <= set("/:.-@"), (where, breaks)  # wrapped, between the name's parts
    finally:
        context.close()
    assert not errors, errors


def _assert_fits(page, when: str) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    if width > 390:
        wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > 391 && !e.closest('.table-wrap, pre'))
            .slice(0, 8).map(e => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)""")
        raise AssertionError(f"{when}: the page is {width} px wide at 390: {wide}")


def test_a_workers_models_show_the_backends_serving_each_and_stored_not_served(dashboard_url, page):
    """Issue 22: per backend what is served; a model only in the store says so, and coverage does not count it."""
    everyone = ["lv-1", "moved-1"]
    held = {"digest": "sha256:" + "ab" * 32, "size": 12 * MB, "modified_at": time.time(), "format": "gguf"}
    only_stored = {**model("tiny:old", [], everyone), "stored_not_served": ["moved-1"], "status": "stored, not served"}
    served_too = {**model("tiny:latest", ["lv-1"], everyone), "stored_not_served": ["moved-1"], "status": "served"}
    ScriptedApi([worker(w) for w in everyone], [only_stored, served_too], worker_models=[
        {"name": "tiny:latest", **held, "backends": ["llamacpp", "vllm"], "backend": "llamacpp,vllm"},
        {"name": "tiny:old", **held, "backends": [], "backend": "stored, not served"}]).install(page)
    page.goto(dashboard_url)
    expect(page.locator('#models-table tr[data-model="tiny:old"] [data-col="coverage"]')).to_have_text(
        "0% · stored, not served")
    latest = page.locator('#models-table tr[data-model="tiny:latest"] [data-col="coverage"]')
    expect(latest).to_have_text("50%")
    expect(latest).to_have_attribute("title", "stored, not served on moved-1")
    page.locator('#workers-table tr[data-worker="lv-1"]').click()
    detail = page.locator("#worker-detail")
    expect(detail.locator("th").nth(4)).to_have_text("Backends")
    expect(detail.locator('tr[data-model="tiny:latest"] [data-col="backends"]')).to_have_text("llamacpp, vllm")
    expect(detail.locator('tr[data-model="tiny:old"] [data-col="backends"]')).to_have_text("stored, not served")
