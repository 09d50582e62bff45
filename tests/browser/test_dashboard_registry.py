"""The Registry panel shows each model's id and metadata (issue 22, finding 6: the id, which `eldric registry
delete` and the API take, was only a tooltip, and nothing the registry read from the headers was shown).
API answers scripted as in test_dashboard_views.py, in the registry's documented shape."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.browser.test_dashboard_views import MB, ScriptedApi, worker

pytestmark = pytest.mark.browser

SHA = "sha256:" + "5e" * 32


@pytest.fixture(scope="module")
def dashboard_url(cluster) -> str:
    return cluster.start_controller() + "/dashboard"


def test_registry_rows_show_the_id_and_the_models_metadata(dashboard_url, page):
    house = {"id": "4f" * 16, "name": "house", "version": "v1", "reference": "house:v1", "format": "gguf",
             "size": 12 * MB, "source": "training", "created_at": time.time(), "description": "house style, 4-bit",
             "details": {"architecture": "llama", "parameter_count": 494_032_768, "quantization": "Q4_K_M",
                         "context_length": 32768},
             "lineage": {"base_model": "qwen2.5:0.5b", "run_id": "run-17"}, "origin": None,
             "files": [{"path": "house.gguf", "size": 12 * MB, "sha256": SHA}]}
    ScriptedApi([worker("inf-1")], [], registry=[house]).install(page)
    page.goto(dashboard_url)
    row = page.locator(f'#registry-table tr.meta-row[data-meta-for="{house["id"]}"]')
    expect(row.locator(".reg-id")).to_have_text(f"id {house['id']}")  # visible, not a tooltip
    meta = row.locator("details.reg-meta")
    expect(meta.locator("dl")).not_to_be_visible()  # folded until asked for
    meta.locator("summary").click()
    terms = meta.locator("dt").all_inner_texts()
    values = meta.locator("dd").all_inner_texts()
    assert dict(zip(terms, values, strict=True)) == {"description": "house style, 4-bit", "architecture": "llama",
                                        "parameters": "494M", "quantization": "Q4_K_M", "context length": "32768",
                                        "base model": "qwen2.5:0.5b", "run id": "run-17"}
    expect(meta.locator(".reg-files li")).to_have_text(f"house.gguf · 12.0 MB · {SHA}")
