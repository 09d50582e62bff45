"""The Models tab against a live cluster: redis-server, docker-registry (behind a throttle, so bars move),
the model registry, the controller and three inference workers; Playwright drives Debian's chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError, expect

from tests.browser.served import served

from tests.integration.conftest import REPO_ROOT
from tests.support.fake_backends import FakeOllama
from testbed.gguf_models import write_gguf_of_size, write_llama_gguf
from testbed.oci_registry import corrupt_blob, push_ollama_model
from testbed.processes import Service, eldric, free_port, wait_until
from tests.support.throttle import ThrottlingProxy

pytestmark = pytest.mark.browser
SECRET = "dash-secret"
WORKERS = ("inf-1", "inf-2", "inf-3")
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "models-tab.png"


def _start_registry(cluster, workdir) -> str:
    port = free_port()
    svc = Service("registry", eldric("registry", "--port", str(port), "--storage", str(workdir / "registry-storage")),
                  workdir, env=cluster.env(ELDRIC_CLUSTER_SECRET=SECRET), cwd=REPO_ROOT).start()
    cluster.services.append(svc)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: cluster.http.get(f"{url}/healthz", timeout=2).ok, timeout=30, message="registry")
    return url


def _start_workers(cluster, names, **env: str) -> None:
    """Start every agent first, then wait: on two cores the start-ups overlap instead of queueing."""
    for name in names:
        svc = Service(f"worker-{name}", eldric("worker", "--type", "inference", "--name", name, "--port", "0",
                                               "--data-dir", str(cluster.root / "nodes" / name)),
                      cluster.root, env=cluster.env(**env), cwd=REPO_ROOT).start()
        cluster.services.append(svc)
        cluster.workers[name] = svc
    for name in names:
        wait_until(lambda: cluster.redis.exists(f"eldric:worker:{name}:alive"), timeout=60,
                   message=f"worker {name} to register\n{cluster.logs()}")


def _models(cluster) -> dict[str, dict]:
    return {m["name"]: m for m in cluster.api("GET", "/api/v1/models").json()["models"]}


@pytest.fixture(scope="module")
def dash(cluster, oci, workdir, tiny_model):
    # 1 MiB/s per connection, 1 MiB ranges, 4 connections: a 12 MB model takes about 3 s per worker.
    proxy = ThrottlingProxy(oci.url, bytes_per_second=1 << 20)
    ollama = FakeOllama(workdir / "fake-ollama").start()  # registry models are installed through Ollama's API
    registry_url = _start_registry(cluster, workdir)
    cluster.start_controller(ELDRIC_REGISTRY_URL=registry_url, ELDRIC_CLUSTER_SECRET=SECRET)
    _start_workers(cluster, WORKERS, ELDRIC_CLUSTER_SECRET=SECRET, ELDRIC_OLLAMA_REGISTRY=proxy.url,
                   ELDRIC_PART_BYTES=str(1 << 20), ELDRIC_OLLAMA_URL=ollama.url, ELDRIC_BACKENDS="ollama")
    push_ollama_model(oci.url, "library/big", "latest",
                      gguf_path=write_gguf_of_size(workdir / "big.gguf", 12 << 20, name="big"))
    # tiny on one worker of three: the coverage panel's partly-covered model
    job = cluster.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["inf-1"]}).json()
    assert cluster.wait_job(job["id"])["state"] == "completed"
    wait_until(lambda: "tiny:latest" in _models(cluster), timeout=30, message="tiny in the inventory")
    with open(write_llama_gguf(workdir / "house.gguf", name="house", width=96), "rb") as f:
        resp = cluster.api("POST", "/api/v1/model-registry/upload", params={"name": "house", "filename": "house.gguf"},
                           data=f)
    assert resp.status_code == 201, resp.text
    cluster.house = resp.json()
    yield cluster
    proxy.close()
    ollama.stop()


def _open(page, cluster, path: str = "/dashboard"):
    page.goto(f"{cluster.controller_url}{path}")
    expect(page.locator("#workers-table tbody tr")).to_have_count(len(WORKERS))


def test_pull_to_all_workers_shows_a_live_bar_per_worker_until_completed(dash, page, artifacts):
    _open(page, dash)
    page.fill("#pull-model", "big")
    button = page.get_by_role("button", name="Pull to All Workers")
    button.click()
    expect(page.locator("#pull-bars li")).to_have_count(len(WORKERS))
    expect(button).to_be_focused()  # busy (aria-disabled), yet the focus stays where the user pressed
    # Live: some bar shows a partial percentage before the end, with its rate and time left.
    page.wait_for_function("""() => [...document.querySelectorAll('#pull-bars li[data-state=pulling] .bar')]
        .some(b => +b.getAttribute('aria-valuenow') > 0 && +b.getAttribute('aria-valuenow') < 100)""",
                           timeout=45_000)
    rated = page.wait_for_function("""() => [...document.querySelectorAll('#pull-bars li[data-phase=pulling]')]
        .map(li => [li.querySelector('.rate').textContent, li.querySelector('.left').textContent])
        .find(([rate, left]) => rate && left)""", timeout=45_000).json_value()
    # Hours too: the first rate a loaded machine measures can be a few hundred B/s ('18 h 44 min left').
    assert re.fullmatch(r"\d+(\.\d+)? (B|kB|MB)/s", rated[0]) and re.fullmatch(
        r"\d+ s left|\d+ min( \d+ s)? left|\d+ h( \d+ min)? left|\d+ d( \d+ h)? left", rated[1]), rated
    try:  # for the picture: every bar on its way, if the timing allows
        page.wait_for_function("""() => [...document.querySelectorAll('#pull-bars li .bar')]
            .every(b => +b.getAttribute('aria-valuenow') > 25 && +b.getAttribute('aria-valuenow') < 95)""",
                               timeout=8_000)
    except PlaywrightTimeoutError:
        pass
    shot = artifacts / "models-tab.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("ELDRIC_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    for name in WORKERS:
        row = page.locator(f'#pull-bars li[data-worker="{name}"]')
        expect(row).to_have_attribute("data-state", "completed", timeout=60_000)
        expect(row.locator(".pct")).to_have_text("100.0%")
        expect(row.locator(".status")).to_have_text("completed")
        expect(row.locator(".bytes")).to_have_text(re.compile(r"^12\.\d+ MB / 12\.\d+ MB$"))
    summary = page.locator("#pull-summary")
    expect(summary.locator("[data-job-state]")).to_have_attribute("data-job-state", "completed")
    expect(summary).not_to_contain_text("polling")  # the event stream fed the bars
    expect(button).to_be_enabled()
    expect(button).to_be_focused()
    # The jobs panel shows it with one indicator per worker, finished as history.
    job = page.locator("#jobs-list li.job").first
    expect(job).to_have_attribute("data-state", "completed", timeout=20_000)
    expect(job.locator(".dot[data-state=completed]")).to_have_count(len(WORKERS))
    assert shot.stat().st_size > 10_000


def test_a_typo_is_refused_under_the_form_naming_the_tags(dash, page):
    """Issue 22, finding 5: the controller asks upstream first; no job, no bars, the tags that exist."""
    _open(page, dash)
    page.fill("#pull-model", "tiny:latestt")
    page.get_by_role("button", name="Pull to All Workers").click()
    expect(page.locator("#pull-summary .error")).to_have_text(
        f"could not start the pull: model 'tiny:latestt' not found at {dash.oci.url}: its tags there are latest")
    expect(page.locator("#pull-bars li")).to_have_count(0)


def test_failing_pull_shows_the_reason_on_every_bar(dash, page, workdir):
    pushed = push_ollama_model(dash.oci.url, "library/bad-bytes", "latest",
                               gguf_path=write_llama_gguf(workdir / "bad-bytes.gguf", name="bad", width=80))
    corrupt_blob(dash.oci.root, pushed["layers"]["application/vnd.ollama.image.model"])  # the digest check fails
    _open(page, dash)
    page.fill("#pull-model", "bad-bytes")
    page.get_by_role("button", name="Pull to All Workers").click()
    for name in WORKERS:
        row = page.locator(f'#pull-bars li[data-worker="{name}"]')
        expect(row).to_have_attribute("data-state", "failed", timeout=60_000)
        expect(row.locator(".status")).to_contain_text("failed:")
        expect(row.locator(".status")).to_contain_text("digest mismatch")
    expect(page.locator("#pull-summary [data-job-state]")).to_have_attribute("data-job-state", "failed")
    job = page.locator("#jobs-list li.job").first
    expect(job).to_have_attribute("data-state", "failed", timeout=20_000)
    expect(job.locator(".dot[data-state=failed]")).to_have_count(len(WORKERS))
    # The reason is in the row itself, no click: one line per distinct reason, naming the workers.
    failure = job.locator(".failures .failure")
    expect(failure).to_have_count(1)
    expect(failure.locator(".reason")).to_be_visible()
    expect(failure.locator(".reason")).to_contain_text("digest mismatch")
    assert sorted(failure.get_attribute("data-workers").split()) == list(WORKERS)
    expect(job.locator("details.per-worker")).not_to_have_attribute("open", "")


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(served(data))}\n\n"


def test_the_watch_takes_the_job_state_from_the_events(dash, page):
    """The job's state is the one each event carries (`job_state`), never re-derived from the workers' records."""
    now = time.time()
    job_id = "f" * 32

    def rec(worker: str, state: str, at: float, **kw) -> dict:
        return {"worker": worker, "state": state, "percent": 0.0, "completed": 0, "total": 0, "status": state,
                "error": None, "updated_at": at, **kw}

    job = {"id": job_id, "kind": "pull", "model": "scripted:latest", "source": "ollama", "state": "pending",
           "created_at": now, "deadline_at": now + 600, "finished_at": None, "targets": ["inf-1", "inf-2"],
           "options": {}, "summary": {"counts": {"pending": 2}, "completed": 0, "total": 0, "percent": 0.0},
           "workers": [rec("inf-1", "pending", now), rec("inf-2", "pending", now)]}
    running = {**job, "state": "running", "workers": [rec("inf-1", "pulling", now + 1), rec("inf-2", "pulling", now + 1)]}
    # The stream is cut before its `done`: by the records alone inf-2 is still pulling (a running job),
    # but the write of inf-1's failure said the job failed.
    body = "retry: 3000\n" + _sse("snapshot", running) + _sse("progress", {"workers": [
        rec("inf-1", "failed", now + 2, error="boom", job_state="failed")]})
    streams, reads = [], []
    page.route(lambda url: url.endswith("/api/v1/models/pull"),
               lambda route: route.fulfill(status=202, json=served(job)))
    page.route(lambda url: url.endswith(f"/pull-jobs/{job_id}/events"),
               lambda route: (streams.append(1), route.fulfill(status=200, body=body, headers={
                   "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})))
    page.route(lambda url: url.endswith(f"/pull-jobs/{job_id}"),
               lambda route: (reads.append(1), route.fulfill(status=404, json={"code": 404, "message": "gone"})))
    _open(page, dash)
    page.fill("#pull-model", "scripted")
    page.get_by_role("button", name="Pull to All Workers").click()
    expect(page.locator("#pull-summary [data-job-state]")).to_have_attribute("data-job-state", "failed")
    expect(page.locator('#pull-bars li[data-worker="inf-1"]')).to_have_attribute("data-state", "failed")
    expect(page.locator('#pull-bars li[data-worker="inf-2"]')).to_have_attribute("data-state", "pulling")
    expect(page.locator("#pull-summary")).to_contain_text("1 failed · 1 pulling")  # the per-worker counts
    expect(page.get_by_role("button", name="Pull to All Workers")).to_be_enabled()  # the watch ended
    page.wait_for_timeout(1500)  # a reconnect or a poll would come within this
    assert streams == [1] and reads == []


def test_coverage_distributes_a_partly_covered_model_in_one_click(dash, page):
    # a pin with replicas (no beat here: it only shows) says what it wants on the model's row
    assert dash.api("POST", "/api/v1/pins", json={"model": "tiny", "replicas": 2}).status_code == 201
    _open(page, dash)
    row = page.locator('#coverage-table tr[data-model="tiny:latest"]')
    expect(row).to_have_class(re.compile(r"\bpartial\b"))
    expect(row.locator(".cov-pct")).to_have_text("33.3%")
    full = page.locator('#coverage-table tr[data-model="big:latest"]')
    expect(full).not_to_have_class(re.compile(r"\bpartial\b"))
    expect(full.get_by_role("button")).to_have_count(0)
    expect(row.locator(".chip.pin")).to_have_text("pinned ×2 (1 serving)")
    expect(row.locator(".chip.pin")).to_have_attribute("data-replicas-wanted", "2")
    expect(full.locator(".chip.pin")).to_have_count(0)
    assert dash.api("DELETE", "/api/v1/pins/tiny").status_code == 204
    # Every column of the heat map is labelled with its worker, over its own column of cells.
    labels = page.locator("#coverage-axis .col-label")
    expect(labels).to_have_count(len(WORKERS))
    order = labels.all_inner_texts()
    assert sorted(order) == list(WORKERS), order
    heat = page.locator("#coverage-canvas").bounding_box()
    for i in range(len(WORKERS)):
        box = labels.nth(i).bounding_box()
        assert heat["x"] + i * heat["width"] / 3 <= box["x"] + box["width"] / 2 <= heat["x"] + (i + 1) * heat["width"] / 3
    distribute = row.get_by_role("button", name="Distribute to 2 missing")
    distribute.focus()
    page.keyboard.press("Enter")
    # The job's bars under the row, one per missing worker; the pressed button keeps the focus meanwhile.
    bars = page.locator('#coverage-table tr.bars-row[data-bars-for="tiny:latest"] .bar-row')
    expect(bars).to_have_count(2)
    assert sorted(bars.evaluate_all("rows => rows.map(r => r.dataset.worker)")) == ["inf-2", "inf-3"]
    expect(distribute).to_be_focused()
    expect(row.locator(".cov-pct")).to_have_text("100%", timeout=60_000)
    expect(row).not_to_have_class(re.compile(r"\bpartial\b"))
    # The button is gone with the gap; the focus stays in its cell (not on some other row's control).
    assert page.evaluate("document.activeElement.dataset.focus") == "coverage:tiny:latest"
    assert sorted(_models(dash)["tiny:latest"]["workers"]) == list(WORKERS)
    job = dash.api("GET", "/api/v1/models/pull-jobs", params={"kind": "distribute", "limit": 1}).json()["jobs"][0]
    assert job["model"] == "tiny:latest" and job["options"]["from_worker"] == "inf-1", job
    assert sorted(job["targets"]) == ["inf-2", "inf-3"]


def test_registry_distribute_upload_and_delete_with_confirmation(dash, page, workdir):
    _open(page, dash)
    house = page.locator(f'#registry-table tr[data-model-id="{dash.house["id"]}"]')
    expect(house).to_contain_text("gguf")
    distribute = house.get_by_role("button", name="Distribute")
    distribute.click()
    distribute.evaluate("b => { b.dataset.old = 'yes'; }")  # gone once the table is re-read
    bars = page.locator(f'#registry-table tr.bars-row[data-bars-for="{dash.house["id"]}"] .bar-row')
    expect(bars).to_have_count(len(WORKERS))  # per-worker bars under the row the job was started from
    expect(house.locator(".job-status")).to_contain_text("completed: 3 completed", timeout=60_000)
    expect(bars.and_(page.locator("[data-state=completed]"))).to_have_count(len(WORKERS))
    # The table is re-read once the job ends; the focus stays on the Distribute button (not the red Delete).
    page.wait_for_function("""id => { const b = document.querySelector(`#registry-table tr[data-model-id="${id}"] button.distribute`);
        return b && !b.dataset.old; }""", arg=dash.house["id"], timeout=20_000)
    expect(distribute).to_be_focused()

    gguf = write_llama_gguf(workdir / "browser-up.gguf", name="browserup", width=128)
    page.set_input_files("#upload-file", str(gguf))
    page.fill("#upload-name", "browserup")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-text")).to_contain_text("uploaded browserup:", timeout=30_000)
    expect(page.locator("#upload-progress")).to_have_js_property("value", 100)
    row = page.locator('#registry-table tr[data-reference^="browserup:"]')
    expect(row).to_have_count(1)
    model_id = row.get_attribute("data-model-id")
    assert dash.api("GET", f"/api/v1/model-registry/{model_id}").json()["size"] == gguf.stat().st_size

    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    row.get_by_role("button", name="Delete").click()
    page.wait_for_timeout(300)
    assert asked and "browserup" in asked[0], asked
    expect(row).to_have_count(1)  # dismissed: nothing deleted
    page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert len(asked) == 2
    assert dash.api("GET", f"/api/v1/model-registry/{model_id}").status_code == 404


def test_workers_drill_down_shows_local_models(dash, page):
    _open(page, dash)
    page.locator('#workers-table tr[data-worker="inf-1"]').click()
    detail = page.locator("#worker-detail")
    expect(detail.locator("h3")).to_contain_text("inf-1")
    expect(detail.locator("h3")).to_contain_text("online")
    expect(detail.locator('[data-fact="backends"]')).to_have_text("ollama")
    expect(detail.locator('[data-fact="free_disk"]')).to_have_text(re.compile(r"\d+(\.\d+)? (kB|MB|GB|TB)"))
    tiny = detail.locator('tr[data-model="tiny:latest"]')
    expect(tiny).to_have_count(1)
    expect(tiny).to_contain_text("gguf")
    expect(tiny.locator('[data-col="backends"]')).to_have_text("ollama")  # its inventory's `backends`
    expect(page.locator('#models-table tr[data-model="big:latest"]')).to_contain_text("100%")


def test_favicon_and_no_failed_request_on_load(dash, page):
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: failed.append(f"{r.failure} {r.url}"))
    _open(page, dash)
    icon = page.locator('link[rel="icon"]').get_attribute("href")
    assert icon.endswith(".svg"), icon
    for path in (icon, "/favicon.ico"):  # the link, and what browsers ask for on any page (the API docs too)
        resp = page.request.get(f"{dash.controller_url}{path}")
        assert resp.status == 200 and resp.headers["content-type"].startswith("image/svg+xml"), (path, resp.status)
        assert resp.body().startswith(b"<svg"), path
    page.wait_for_timeout(500)
    assert not failed, failed


def test_phone_width_fits_every_tab(dash, browser):
    """At 390 px the page is 390 px wide, with the jobs' bars, a worker's details and the JSON open."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        _open(page, dash)
        tabs = page.locator("nav.tabs a")
        hrefs = [tabs.nth(i).get_attribute("href") for i in range(tabs.count())]
        assert hrefs
        for href in hrefs:
            _open(page, dash, href)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            expect(page.locator("#jobs-list li.job").first).to_be_visible()
            for summary in page.locator("#jobs-list details.per-worker summary").all():
                summary.click()
            expect(page.locator("#jobs-list .bar-row").first).to_be_visible()
            page.locator('#workers-table tr[data-worker="inf-1"]').click()
            expect(page.locator("#worker-detail h3")).to_contain_text("inf-1")
            page.locator("#models-panel details.raw summary").click()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{href}: {width} px wide at 390"
    finally:
        context.close()


def test_token_field_sends_the_api_token(dash, page):
    main = dash.controller_url
    url = dash.start_controller(ELDRIC_API_TOKEN="dash-token", ELDRIC_REGISTRY_URL="http://127.0.0.1:9",
                                ELDRIC_CLUSTER_SECRET=SECRET)
    dash.controller_url = main  # the other tests keep using the open controller
    page.goto(f"{url}/dashboard")
    expect(page.locator("#banner")).to_contain_text("API token")
    page.fill("#token", "dash-token")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#workers-table tbody tr")).to_have_count(len(WORKERS))
    expect(page.locator("#banner")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('eldric.apiToken')") == "dash-token"


def _events(resp, limit: float = 60.0):
    """(event, data) pairs of a text/event-stream, comments as ('comment', text)."""
    event, data, deadline = "message", [], time.monotonic() + limit
    for line in resp.iter_lines(decode_unicode=True):
        assert time.monotonic() < deadline, "event stream ran too long"
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


def test_event_stream_contract(dash, oci, workdir):
    assert dash.api("GET", "/api/v1/models/pull-jobs/nope/events").status_code == 404
    push_ollama_model(oci.url, "library/medium", "latest",
                      gguf_path=write_gguf_of_size(workdir / "medium.gguf", 8 << 20, name="medium"))
    job = dash.api("POST", "/api/v1/models/pull", json={"model": "medium", "workers": ["inf-2"]}).json()
    with dash.http.get(f"{dash.controller_url}/api/v1/models/pull-jobs/{job['id']}/events", stream=True,
                       timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        seen = list(_events(resp))
    names = [e for e, _ in seen if e != "comment"]
    assert names[0] == "snapshot" and names[-1] == "done", names
    assert seen[0][1]["id"] == job["id"] and [w["worker"] for w in seen[0][1]["workers"]] == ["inf-2"]
    partial = [r for e, d in seen if e == "progress" for r in d["workers"]
               if r["state"] == "pulling" and 0 < r["percent"] < 100]
    assert partial and partial[0]["worker"] == "inf-2" and partial[0]["total"] > 8 << 20, seen
    # Each published record carries the job's state after its write (the re-read derived ones carry none).
    assert any(r.get("job_state") == "running" for r in partial), partial
    assert seen[-1][1]["state"] == "completed"

    # A job that cannot progress (its only worker is registered but offline): keep-alives, then `end`.
    dash.redis.hset("eldric:worker:ghost", mapping={"id": "ghost", "type": "inference", "last_seen": time.time()})
    dash.redis.sadd("eldric:workers", "ghost")
    try:
        stuck = dash.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["ghost"]}).json()
        started = time.monotonic()
        with dash.http.get(f"{dash.controller_url}/api/v1/models/pull-jobs/{stuck['id']}/events",
                           params={"heartbeat": 0.5, "max_seconds": 2}, stream=True, timeout=30) as resp:
            seen = list(_events(resp, limit=10))
        assert 1.5 < time.monotonic() - started < 8
        assert seen[0][0] == "snapshot" and seen[0][1]["workers"][0]["state"] == "offline"
        assert ("comment", "keep-alive") in seen
        assert seen[-1] == ("end", {"reason": "max_seconds"}), seen
    finally:
        dash.redis.srem("eldric:workers", "ghost")
        dash.redis.delete("eldric:worker:ghost")


def _seed_big_cluster(client, n_workers: int = 200, n_models: int = 300) -> None:
    """200 online inference workers and 300 models in Redis, 100 of them on only some workers."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for j in range(n_workers):
        wid = f"node-{j:03d}"
        pipe.sadd("eldric:workers", wid)
        pipe.hset(f"eldric:worker:{wid}", mapping={
            "id": wid, "type": "inference", "address": f"http://10.0.{j // 250}.{j % 250}:8890",
            "backends": '["ollama"]', "free_disk": 500 << 30, "registered_at": now, "last_seen": now})
        pipe.set(f"eldric:worker:{wid}:alive", "1", ex=600)
        inventory = {}
        for i in range(n_models):
            if i < 100 and (i + j) % 7 == 0:
                continue
            name = f"model-{i:03d}:q4"
            inventory[name] = json.dumps({"name": name, "digest": f"sha256:{i:064x}", "size": (i + 1) << 20,
                                          "modified_at": now, "format": "gguf", "backend": "ollama"})
        pipe.hset(f"eldric:worker:{wid}:models", mapping=inventory)
    pipe.execute()


def test_stays_usable_at_200_workers_and_300_models(dash, page):
    scale_redis = dash.redis_server.url.rsplit("/", 1)[0] + "/1"  # the same server, a database of its own
    import redis as redis_lib
    _seed_big_cluster(redis_lib.Redis.from_url(scale_redis))
    main = dash.controller_url
    url = dash.start_controller(ELDRIC_REDIS_URL=scale_redis)
    dash.controller_url = main
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url.split("?")[0].removeprefix(url)) if "/api/" in r.url else None)
    started = time.monotonic()
    page.goto(f"{url}/dashboard")
    expect(page.locator("#coverage-stats")).to_have_text(
        "300 models × 200 eligible workers · 100 partly covered", timeout=30_000)
    elapsed = time.monotonic() - started
    expect(page.locator("#coverage-table tbody tr")).to_have_count(25)
    expect(page.locator("#coverage-table tbody tr.partial")).to_have_count(25)  # the partly covered come first
    expect(page.locator("#workers-table tbody tr")).to_have_count(25)
    expect(page.locator("#models-table tbody tr")).to_have_count(25)
    expect(page.locator("#coverage-pager")).to_contain_text("page 1 of 12")
    heat = page.locator("#coverage-canvas")  # every model x every worker, one element
    expect(heat).to_have_attribute("data-rows", "300")
    expect(heat).to_have_attribute("data-cols", "200")
    expect(page.locator("#coverage-columns")).to_contain_text("200 workers")
    elements = page.evaluate("document.getElementsByTagName('*').length")
    assert elements < 3000, elements  # bounded: pages of 25 rows, one canvas for the heat map
    page.locator("#coverage-pager button", has_text="next").click()
    expect(page.locator("#coverage-pager")).to_contain_text("page 2 of 12")
    assert not [c for c in calls if c.startswith("/api/v1/workers/")], calls  # no request per worker or cell
    assert {"/api/v1/models", "/api/v1/workers"} <= set(calls)
    print(f"\n200 x 300 dashboard: first render {elapsed:.1f} s, {elements} elements, {len(calls)} API calls")
