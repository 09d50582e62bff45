"""Ollama's unload request: `POST /api/generate {model, keep_alive: 0, prompt: ""}` (or /api/chat with no messages).

Ollama reads `keep_alive` as a number of seconds or a Go duration string; zero with nothing to
generate means "unload now" (docs/api.md, "Unload a model"). The controller sends such a request to
every worker where the model is loaded; the agent answers it for backends that cannot unload.
"""

from __future__ import annotations

import re

_ZERO_DURATION = re.compile(r"^\s*0+(\.0*)?\s*(ns|us|µs|ms|s|m|h)?\s*$")


def is_zero_keep_alive(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value == 0
    return isinstance(value, str) and bool(_ZERO_DURATION.match(value))


def is_unload(endpoint: str, body: dict) -> bool:
    """Is this Ollama request (endpoint `api/generate` or `api/chat`) an unload?"""
    if endpoint == "api/generate":
        nothing = not body.get("prompt")
    elif endpoint == "api/chat":
        nothing = not body.get("messages")
    else:
        return False
    return nothing and is_zero_keep_alive(body.get("keep_alive"))
