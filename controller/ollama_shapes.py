"""Ollama's answer shapes for `/api/tags` and `/api/show` (api/types.go ListModelResponse, ModelDetails,
ShowResponse), filled in completely whatever a worker's inventory or show answer left out.

Front-ends decode these strictly (issue 23): Enchanted / OllamaKit fails the whole model list on one
missing or null `details` string, Open WebUI shows `parameter_size` and `quantization_level`, AnythingLLM
reads `capabilities` and the `model_info` key ending in `.context_length`, Continue parses `parameters`
and looks for `.Suffix` in `template`. So every string field Ollama types as a string is a string ("" when
unknown), `families` is a list, `model_info` and `capabilities` are always there, and times are RFC 3339
with fractional seconds (Ollama writes nanoseconds; Swift's fractional-seconds formatter rejects a time
without them).
"""

from __future__ import annotations

from datetime import UTC, datetime

from eldric.core.capabilities import derive_capabilities
from eldric.core.formats import parameter_size_label

DETAIL_STRINGS = ("parent_model", "format", "family", "parameter_size", "quantization_level")
SHOW_STRINGS = ("modelfile", "parameters", "template", "system", "license")


def rfc3339(value: float | str | None) -> str:
    """A Unix time (or an ISO-8601 string a worker already wrote) as RFC 3339 in UTC with microseconds."""
    if isinstance(value, str) and value:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            when = datetime.fromtimestamp(0, UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    else:
        when = datetime.fromtimestamp(float(value or 0), UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def model_details(details: dict | None, model_format: str | None = None) -> dict:
    """ModelDetails with every key present: strings ("" when unknown) and `families` a list of strings."""
    d = details or {}
    family = _text(d.get("family") or d.get("architecture"))
    families = d.get("families")
    if not isinstance(families, list) or not families:
        families = [family] if family else []
    out = {"parent_model": _text(d.get("parent_model")),
           "format": _text(d.get("format") or model_format),
           "family": family,
           "families": [_text(f) for f in families if f],
           "parameter_size": _text(d.get("parameter_size") or parameter_size_label(d.get("parameter_count"))),
           "quantization_level": _text(d.get("quantization_level") or d.get("quantization") or d.get("file_type"))}
    return out


def tag_entry(model: dict) -> dict:
    """One /api/tags entry from the cluster's model view; `details.status` (ours, beside Ollama's keys) says
    whether a backend of some worker serves it ("served") or only a store holds it ("stored, not served")."""
    details = model_details(model.get("details"), model.get("format"))
    details["status"] = model.get("status") or "served"
    return {"name": model["name"], "model": model["name"], "modified_at": rfc3339(model.get("modified_at")),
            "size": int(model.get("size") or 0), "digest": _text(model.get("digest")).removeprefix("sha256:"),
            "details": details}


def show_answer(answer: dict) -> dict:
    """A worker's show answer completed to ShowResponse: every string, details, model_info, capabilities,
    modified_at (an agent from before capabilities were derived still gets a sound list)."""
    out = dict(answer)
    for key in SHOW_STRINGS:
        out[key] = _text(out.get(key))
    out["details"] = model_details(out.get("details"))
    info = out.get("model_info")
    out["model_info"] = info if isinstance(info, dict) else {}
    if out["details"]["family"] and "general.architecture" not in out["model_info"]:
        out["model_info"]["general.architecture"] = out["details"]["family"]
    capabilities = out.get("capabilities")
    if not isinstance(capabilities, list):
        capabilities = derive_capabilities(out["template"], out["model_info"], out["details"]["families"])
    out["capabilities"] = capabilities
    out["modified_at"] = rfc3339(out.get("modified_at"))
    return out


def _text(value: object) -> str:
    return "" if value is None else str(value)
