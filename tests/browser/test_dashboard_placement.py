"""The pull form's replicas, selector and spread fields (issue 25) over scripted API answers: what the page
sends (only the fields given), a malformed selector refused on the page with nothing sent, and a placed job's
skipped part showing its reason."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.browser.test_dashboard_views import ScriptedApi, job, record, worker

pytestmark = pytest.mark.browser


class RecordingApi(ScriptedApi):
    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.posted: list[dict] = []

    def answer(self, route) -> None:
        if route.request.method == "POST" and route.request.url.endswith("/api/v1/models/pull"):
            self.posted.append(json.loads(route.request.post_data or "{}"))
        super().answer(route)


@pytest.fixture(scope="module")
def dashboard_url(cluster) -> str:
    return cluster.start_controller() + "/dashboard"


def test_pull_form_sends_replicas_selector_and_spread(dashboard_url, page):
    api = RecordingApi([worker("inf-1"), worker("inf-2")], [])
    why = "no room: needs 9.2 GiB, has 3.1 GiB"
    api.started["pull"] = job("9" * 32, "pull", "tiny:latest", "running", [
        record("inf-1", "pending", 1.0, placement_reason="room: 90.0 GiB free after the reserve, 1 models"),
        record("inf-2", "skipped", 1.0, status=f"skipped ({why})", placement_reason=why, finished_at=1.0)],
        options={"placement": {"replicas": 2, "selector": {"zone": "a"}, "spread": "zone"}})
    api.install(page)
    page.goto(dashboard_url)
    page.fill("#pull-model", "tiny")
    page.fill("#pull-selector", "zone")  # not key=value: refused on the page
    page.click("#pull-button")
    expect(page.locator("#pull-summary .error")).to_contain_text('selector: "zone" is not key=value')
    assert api.posted == []
    page.fill("#pull-replicas", "2")
    page.fill("#pull-selector", "zone=a, type=inference")
    page.fill("#pull-spread", "zone")
    page.click("#pull-button")
    expect(page.locator("#pull-summary")).to_contain_text("tiny:latest")
    assert api.posted == [{"model": "tiny", "replicas": 2, "selector": {"zone": "a", "type": "inference"},
                           "spread": "zone"}]
    expect(page.locator('#pull-bars .bar-row[data-worker="inf-2"]')).to_contain_text(why)
