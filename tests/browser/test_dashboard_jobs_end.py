"""Issue 12 in the dashboard: cancel a running job and remove a worker, each after a confirmation.

The API is scripted (tests/browser/test_dashboard_views.py's ScriptedApi); the test checks the calls the
page makes and what it shows after them.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.browser.served import served

from tests.browser.test_dashboard_views import ScriptedApi, job, progress, record, worker

pytestmark = pytest.mark.browser

JOB_ID = "c" * 32


class CancellingApi(ScriptedApi):
    """ScriptedApi plus the cancel and remove calls, which it records and applies."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.calls: list[str] = []

    def answer(self, route) -> None:
        url = urlsplit(route.request.url)
        method = route.request.method
        if method == "POST" and (m := re.fullmatch(r"/api/v1/models/pull-jobs/(\w+)/cancel", url.path)):
            self.calls.append(f"POST {url.path}")
            found = self.job(m[1])
            found.update(state="cancelled", workers=[{**w, "state": "cancelled"} if w["state"] != "completed" else w
                                                     for w in found["workers"]])
            route.fulfill(json=served(found))
        elif method == "DELETE" and (m := re.fullmatch(r"/api/v1/workers/([^/]+)", url.path)):
            self.calls.append(f"DELETE {url.path}{'?' + url.query if url.query else ''}")
            self.workers = [w for w in self.workers if w["id"] != m[1]]
            route.fulfill(status=204, body="")
        else:
            super().answer(route)


@pytest.fixture(scope="module")
def dashboard_url(cluster) -> str:
    return cluster.start_controller() + "/dashboard"


def test_cancel_asks_first_then_cancels_the_job(dashboard_url, page):
    running = job(JOB_ID, "pull", "tiny:latest", "running",
                  [record("gpu-1", "completed", 1.0, finished_at=1.0), progress("gpu-2", 1.0, 10, 100)])
    api = CancellingApi([worker("gpu-1"), worker("gpu-2")], [], jobs=[running]).install(page)
    page.goto(dashboard_url)
    row = page.locator(f'#jobs-list li.job[data-job="{JOB_ID}"]')
    button = row.get_by_role("button", name="cancel")
    expect(button).to_be_visible()

    page.once("dialog", lambda dialog: dialog.dismiss())
    button.click()
    page.wait_for_timeout(300)
    assert api.calls == []  # the operator said no

    page.once("dialog", lambda dialog: dialog.accept())
    button.click()
    expect(row.locator(".chip").first).to_have_text("cancelled")
    assert api.calls == [f"POST /api/v1/models/pull-jobs/{JOB_ID}/cancel"]
    expect(row.get_by_role("button", name="cancel")).to_have_count(0)  # a finished job has no cancel button


def test_remove_worker_asks_first_and_forces_only_an_online_worker(dashboard_url, page):
    api = CancellingApi([worker("gpu-1"), worker("old-1", online=False)], []).install(page)
    page.goto(dashboard_url)
    expect(page.locator("#workers-table tbody tr")).to_have_count(2)

    page.locator('#workers-table tr[data-worker="old-1"]').click()
    messages: list[str] = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.accept()))
    page.locator("#worker-detail").get_by_role("button", name="remove").click()

    expect(page.locator("#workers-table tbody tr")).to_have_count(1)
    expect(page.locator("#worker-detail")).to_be_hidden()
    assert api.calls == ["DELETE /api/v1/workers/old-1"] and "Remove old-1" in messages[0]

    page.locator('#workers-table tr[data-worker="gpu-1"]').click()
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.accept()))
    page.locator("#worker-detail").get_by_role("button", name="remove").click()
    expect(page.locator("#workers-table tbody tr")).to_have_count(0)
    assert api.calls[-1] == "DELETE /api/v1/workers/gpu-1?force=true" and "is online" in messages[1]
