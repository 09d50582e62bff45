"""What `ollama show` tells about a model in this node's store, in Ollama's response shape."""

from __future__ import annotations

import json
import os
from datetime import datetime, UTC

from pathlib import Path

from eldric.core import manifests as mt
from eldric.core.capabilities import derive_capabilities
from eldric.core.errors import EldricError
from eldric.core.formats import parameter_size_label
from eldric.core.ggufheader import GGUFHeaderError, read_header
from eldric.core.names import ModelName
from worker_agent.installers import LocalModel
from worker_agent.installers.ollama import create_request, render_modelfile
from worker_agent.ollama_store import OllamaStore


def show_file_model(entry: dict, files: dict[str, Path]) -> dict:
    """`show` for a model that came as files (registry, URL, peer), in the same shape."""
    details = entry.get("details") or {}
    answer = {"modelfile": "", "parameters": "", "template": "", "system": "", "license": "",
              "details": {"format": entry.get("format") or "", "family": details.get("architecture") or "",
                          "families": [details["architecture"]] if details.get("architecture") else [],
                          "parameter_size": parameter_size_label(details.get("parameter_count")),
                          "quantization_level": details.get("quantization") or details.get("file_type") or "",
                          "parent_model": (entry.get("lineage") or {}).get("base_model", "")},
              "model_info": {}, "capabilities": [],
              "modified_at": datetime.fromtimestamp(entry.get("modified_at") or 0, UTC).isoformat()}
    if entry.get("format") != "gguf":
        return answer
    files = {rel: _absolute(path) for rel, path in files.items()}
    try:
        model = LocalModel.from_files(entry["name"], files, format="gguf",
                                      digests={f["path"]: f["sha256"] for f in entry.get("files", [])})
        request = create_request(model)
        info = model.gguf_info()
        model_info = gguf_model_info(model.gguf_file[1])
    except (EldricError, ValueError, OSError):
        return answer
    params = request.get("parameters") or {}
    arch = info.get("architecture") or ""
    template = request.get("template") or ""
    answer.update(modelfile=render_modelfile(model, request), template=template, parameters=parameters_text(params),
                  model_info=model_info, capabilities=derive_capabilities(
                      template, model_info, has_projector=any("mmproj" in rel.lower() for rel in files)))
    answer["details"].update(family=arch, families=[arch] if arch else [],
                             parameter_size=parameter_size_label(info.get("parameter_count")),
                             quantization_level=info.get("file_type") or "")
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
    details = store.details(manifest)
    return {
        "modelfile": _modelfile(name, store, model_layer, template, system, params, license_text),
        "parameters": parameters_text(params),
        "template": template or "",
        "system": system or "",
        "license": license_text or "",
        "details": details,
        "model_info": info,
        "capabilities": derive_capabilities(template or "", info, details.get("families") or (),
                                            has_projector=manifest.layer_of(mt.OLLAMA_PROJECTOR) is not None),
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


def parameters_text(params: dict) -> str:
    """Ollama's `parameters` text (server/routes.go ShowHandler): one `name value` line per value, the name
    padded to 30 columns, strings quoted (`stop "<|im_end|>"`), what Continue parses for num_ctx and stop."""
    return "\n".join(f"{k:<30} {_fmt(v)}" for k, vs in params.items() for v in _as_list(vs))


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def _fmt(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def _model_info(store: OllamaStore, layer: mt.Layer | None) -> dict:
    if layer is None:
        return {}
    try:
        return gguf_model_info(store.blobs.path(layer.digest))
    except (EldricError, ValueError, OSError):
        return {}


def gguf_model_info(path: Path) -> dict:
    """Ollama's `model_info`: the GGUF header's keys as they are (general.architecture, <arch>.context_length,
    <arch>.pooling_type, ...), `general.parameter_count` counted from the tensors, and the arrays (the tokenizer's
    vocabulary) as empty lists, as Ollama gives them when `verbose` is not asked for."""
    try:
        header = read_header(path)
    except GGUFHeaderError as exc:
        raise ValueError(f"not a readable GGUF file: {exc}") from None
    info: dict = {key: [] for key in header.array_lengths}
    info.update(header.metadata)
    info["general.parameter_count"] = header.parameter_count
    return dict(sorted(info.items()))


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
