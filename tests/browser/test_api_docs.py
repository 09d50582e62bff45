"""The API docs page works with no internet: Swagger UI comes from the controller itself."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.browser


def test_api_docs_render_with_every_request_kept_on_loopback(cluster, page):
    url = cluster.start_controller(ELDRIC_API_TOKEN="docs-token")  # the docs stay public with a token set
    outside: list[str] = []

    def only_loopback(route):
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:  # what an air-gapped site does to a CDN request
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.goto(f"{url}/api/v1/docs")
    page.locator(".swagger-ui .info .title").filter(has_text="Eldric Model Manager").wait_for()
    page.locator(".opblock-summary-path", has_text="/api/v1/models/pull").first.wait_for()
    assert not outside, f"the docs page reached outside: {outside}"
    assert page.locator(".opblock").count() > 20
