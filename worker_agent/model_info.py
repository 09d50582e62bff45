"""What `ollama show` tells about a model in this node's store, in Ollama's response shape."""

from __future__ import annotations

import json
import os
from datetime import datetime, UTC

from pathlib import Path

from eldric.core import manifests as mt
from eldric.core.errors import EldricError
from eldric.core.formats import gguf_info, parameter_size_label
from eldric.core.names import ModelName
from worker_agent.installers import LocalModel
from worker_agent.installers.ollama import create_request, render_modelfile
from worker_agent.ollama_store import OllamaStore


def show_file_model(entry: dict, files: dict[str, Path]) -> dict:
    """`show` for a model that came as files (registry, URL, peer), in the same shape."""
    details = entry.get("details") or {}
    answer = {"modelfile": "", "parameters": "", "template": "", "system": "", "license": "",
              "details": {"format": entry.get("format") or "", "family": details.get("architecture") or "",
                          "families": [details["architecture"]] if details.get("architecture") else None,
                          "parameter_size": parameter_size_label(details.get("parameter_count")),
                          "quantization_level": details.get("quantization") or details.get("file_type") or "",
                          "parent_model": (entry.get("lineage") or {}).get("base_model", "")},
              "model_info": {}, "modified_at": datetime.fromtimestamp(entry.get("modified_at") or 0,
                                                                        UTC).isoformat()}
    if entry.get("format") != "gguf":
        return answer
    files = {rel: _absolute(path) for rel, path in files.items()}
    try:
        model = LocalModel.from_files(entry["name"], files, format="gguf",
                                      digests={f["path"]: f["sha256"] for f in entry.get("files", [])})
        request = create_request(model)
        info = model.gguf_info()
    except (EldricError, ValueError, OSError):
        return answer
    params = request.get("parameters") or {}
    arch = info.get("architecture") or ""
    answer.update(
        modelfile=render_modelfile(model, request), template=request.get("template") or "",
        parameters="\n".join(f"{k:<30} {_fmt(v)}" for k, vs in params.items() for v in _as_list(vs)))
    answer["details"].update(family=arch, families=[arch] if arch else None,
                             parameter_size=parameter_size_label(info.get("parameter_count")),
                             quantization_level=info.get("file_type") or "")
    answer["model_info"] = {k: v for k, v in {
        "general.architecture": arch, "general.parameter_count": info.get("parameter_count"),
        "general.file_type": info.get("file_type"),
        f"{arch}.context_length": info.get("context_length")}.items() if v is not None}
    return answer


def show_model(store: OllamaStore, name: ModelName) -> dict | None:
    found = store.read_manifest(name)
    if found is None:
        return None
    _raw, manifest = found
    template = store.layer_text(manifest, mt.OLLAMA_TEMPLATE)
    system = store.layer_text(manifest, mt.OLLAMA_SYSTEM)
    license_text = store.layer_text(manifest, mt.OLLAMA_LICENSE)
    params = _params(store.layer_text(manifest, mt.OLLAMA_PARAMS))
    model_layer = manifest.layer_of(mt.OLLAMA_MODEL)
    info = _model_info(store, model_layer)
    return {
        "modelfile": _modelfile(name, store, model_layer, template, system, params, license_text),
        "parameters": "\n".join(f"{k:<30} {_fmt(v)}" for k, vs in params.items() for v in _as_list(vs)),
        "template": template or "",
        "system": system or "",
        "license": license_text or "",
        "details": store.details(manifest),
        "model_info": info,
        "modified_at": datetime.fromtimestamp(store.manifest_path(name).stat().st_mtime, UTC).isoformat(),
    }


def _absolute(path: Path) -> Path:
    """`path` from the filesystem root: a Modelfile is used elsewhere (`ollama create -f`), where a path relative
    to the agent's working directory (a relative --data-dir) names nothing (issue 22)."""
    return Path(os.path.abspath(path))


def _params(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def _fmt(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def _model_info(store: OllamaStore, layer: mt.Layer | None) -> dict:
    """Header facts with Ollama's key names (general.*, <arch>.context_length)."""
    if layer is None:
        return {}
    try:
        info = gguf_info("model.gguf", store.blobs.path(layer.digest))
    except (EldricError, ValueError, OSError):
        return {}
    arch = info.get("architecture") or ""
    out = {"general.architecture": arch, "general.parameter_count": info.get("parameter_count"),
           "general.file_type": info.get("file_type")}
    if info.get("context_length") is not None:
        out[f"{arch}.context_length"] = info["context_length"]
    return {k: v for k, v in out.items() if v is not None}


def _modelfile(name: ModelName, store: OllamaStore, layer: mt.Layer | None, template: str | None,
               system: str | None, params: dict, license_text: str | None) -> str:
    lines = [f"# Modelfile generated by Eldric from {name.short}"]
    if layer is not None:
        lines.append(f"FROM {_absolute(store.blobs.path(layer.digest))}")
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    for key, values in params.items():
        lines.extend(f"PARAMETER {key} {_fmt(v)}" for v in _as_list(values))
    if license_text:
        lines.append(f'LICENSE """{license_text}"""')
    return "\n".join(lines) + "\n"
