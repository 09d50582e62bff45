"""The Ollama image a create request makes: its layers, its config blob and its manifest (no I/O here).

Ollama's server/create.go, read for its order and kept: the base's layers (the `from` model's, or the
uploaded GGUF as the model layer) then the adapter; TEMPLATE and SYSTEM replace the base's layer of their
kind (an empty SYSTEM removes it); each LICENSE is appended; PARAMETERs are merged over the base's params
(the request's keys win) into one params layer; MESSAGEs, when given, replace the base's messages layer.
The config blob keeps the base's config (format, family, type, quantization) or, for an uploaded GGUF,
says what its header says; `rootfs.diff_ids` lists every layer. The small blobs (texts, params, config)
are returned as bytes for the caller to store before the manifest that names them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from eldric.core.digests import Digest
from eldric.core.formats import parameter_size_label
from eldric.core.manifests import (CONFIG, MANIFEST_V2, OLLAMA_LICENSE, OLLAMA_MESSAGES, OLLAMA_MODEL,
                                   OLLAMA_PARAMS, OLLAMA_SYSTEM, OLLAMA_TEMPLATE, Layer, Manifest)
from eldric.core.create_requests import CreateSpec

# Config keys carried over from the base model's config (Ollama's model.ConfigV2).
_KEPT = ("model_format", "model_family", "model_families", "model_type", "file_type", "renderer", "parser",
         "requires", "capabilities", "context_length", "embedding_length", "base_name")


@dataclass
class Build:
    layers: list[Layer]
    config: Layer
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes of every blob made here

    def manifest(self) -> Manifest:
        return Manifest(config=self.config, layers=tuple(self.layers), media_type=MANIFEST_V2)


@dataclass(frozen=True)
class Base:
    """What a create starts from: the base model's layers, its params and config (decoded), or none."""

    layers: tuple[Layer, ...] = ()
    params: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def build_model(spec: CreateSpec, base: Base, *, files: list[Layer] = (), adapters: list[Layer] = (),
                facts: dict | None = None) -> Build:
    """The layers and config of `spec` over `base` (a `from` model) or over `files` (uploaded model layers)."""
    blobs: dict[str, bytes] = {}

    def text_layer(media_type: str, data: bytes) -> Layer:
        digest = Digest.of_bytes(data)
        blobs[str(digest)] = data
        return Layer(media_type, digest, len(data))

    layers = list(base.layers) if spec.base else list(files)
    layers += adapters
    if spec.template is not None and spec.template != "":
        layers = [*_without(layers, OLLAMA_TEMPLATE), text_layer(OLLAMA_TEMPLATE, spec.template.encode())]
    if spec.system is not None:
        layers = _without(layers, OLLAMA_SYSTEM)
        if spec.system:
            layers.append(text_layer(OLLAMA_SYSTEM, spec.system.encode()))
    for text in spec.license:
        layers.append(text_layer(OLLAMA_LICENSE, text.encode()))
    params = {**(base.params if spec.base else {}), **spec.parameters}
    if params:
        layers = [*_without(layers, OLLAMA_PARAMS), text_layer(OLLAMA_PARAMS, json.dumps(params).encode())]
    if spec.messages:
        layers = [*_without(layers, OLLAMA_MESSAGES), text_layer(OLLAMA_MESSAGES, json.dumps(list(spec.messages)).encode())]
    config = _config(base.config if spec.base else {}, facts or {}, layers)
    data = json.dumps(config).encode()
    config_layer = Layer(CONFIG, Digest.of_bytes(data), len(data))
    blobs[str(config_layer.digest)] = data
    return Build(layers=layers, config=config_layer, blobs=blobs)


def _without(layers: list[Layer], media_type: str) -> list[Layer]:
    return [layer for layer in layers if layer.media_type != media_type]


def _config(base: dict, facts: dict, layers: list[Layer]) -> dict:
    config = {k: base[k] for k in _KEPT if base.get(k) not in (None, "", [])}
    if not config:
        family = facts.get("architecture") or ""
        config = {"model_format": "gguf", "model_family": family, "model_families": [family] if family else None,
                  "model_type": parameter_size_label(facts.get("parameter_count")),
                  "file_type": facts.get("file_type") or ""}
    config.update(architecture="amd64", os="linux",
                  rootfs={"type": "layers", "diff_ids": [str(layer.digest) for layer in layers]})
    return config


def model_layers(files: dict[str, tuple[Digest, int]], media_type: str = OLLAMA_MODEL) -> list[Layer]:
    """Uploaded files as layers of `media_type`, in file-name order (one GGUF: one model layer)."""
    return [Layer(media_type, digest, size) for _, (digest, size) in sorted(files.items())]
