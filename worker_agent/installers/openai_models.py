"""Does an OpenAI-compatible server (llama.cpp's llama-server, vLLM) list a model? `GET /v1/models`.

Both answer `{"object": "list", "data": [{"id": ..., "object": "model", ...}]}`. The id is the name
the server was told (`--alias`, `--served-model-name`) or else the path it loaded; llama-server's
router mode (`--models-dir DIR`) lists each GGUF of DIR by its file name without `.gguf`, and each
subdirectory (split or multimodal models) by its name. A model counts as listed when an id is one of
its names: the model name, its backend name (`model_slug`), or the installed path, its file name or stem.
"""

from __future__ import annotations

import os

import requests

from eldric.core.redaction import redact_url, redact_urls
from eldric.transfer.http import http_session
from worker_agent.installers import BackendUnavailableError, model_slug


def model_ids(url: str, timeout: float) -> list[str]:
    """The ids the server lists; BackendUnavailableError when it cannot be asked."""
    try:
        r = http_session().get(f"{url.rstrip('/')}/v1/models", timeout=timeout)  # beside the agent: no proxy
    except requests.RequestException as exc:
        raise BackendUnavailableError(f"{redact_url(url)} unreachable: {redact_urls(str(exc))}") from None
    if r.status_code != 200:
        raise BackendUnavailableError(f"{redact_url(url)}/v1/models answered HTTP {r.status_code}")
    try:
        data = r.json().get("data") or []
        return [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]
    except (ValueError, AttributeError):
        raise BackendUnavailableError(f"{redact_url(url)}/v1/models did not answer an OpenAI model list") from None


def names_of(name: str, location: str) -> set[str]:
    """Every id a server may list the installed model under."""
    base = os.path.basename(location.rstrip("/"))
    return {name, model_slug(name), location.rstrip("/"), base, base.removesuffix(".gguf")}


def lists(ids: list[str], name: str, location: str) -> bool:
    """Is one of `ids` (a /v1/models answer) the model installed at `location`?"""
    names = names_of(name, location)
    for model_id in ids:
        base = os.path.basename(model_id.rstrip("/"))
        if model_id in names or base in names or base.removesuffix(".gguf") in names:
            return True
    return False


def is_listed(url: str, name: str, location: str, timeout: float) -> bool:
    """Does the server at `url` list the model; BackendUnavailableError when it cannot be asked."""
    return lists(model_ids(url, timeout), name, location)
