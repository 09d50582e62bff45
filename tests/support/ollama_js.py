"""Runs tests/js/ollama_client.mjs (the official `ollama` npm client) against a controller, for the
integration tests that face it with ollama-js as well as with the Python client. One node process per call:
its start (~0.3 s) is the whole cost, so a test batches its steps into one call."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def run_steps(url: str, steps: list[dict], token: str = "", timeout: float = 60) -> list[dict]:
    """Each step's answer (see ollama_client.mjs); skips the test when node or the npm client is absent."""
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "ollama").is_dir():
        pytest.skip("node or tests/js/node_modules missing: run scripts/install-deps.sh (npm ci in tests/js)")
    done = subprocess.run([node, str(JS_DIR / "ollama_client.mjs"), url, token, json.dumps(steps)],
                          capture_output=True, text=True, timeout=timeout, cwd=JS_DIR)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
