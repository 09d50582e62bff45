"""Image manifests in the Docker schema-2 shape the Ollama registry serves."""

from __future__ import annotations

import json
from dataclasses import dataclass

from eldric.core.digests import Digest
from eldric.core.errors import InvalidDigestError, InvalidManifestError

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_ADAPTER = "application/vnd.ollama.image.adapter"
OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"
OLLAMA_TEMPLATE = "application/vnd.ollama.image.template"
OLLAMA_SYSTEM = "application/vnd.ollama.image.system"
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
OLLAMA_LICENSE = "application/vnd.ollama.image.license"
OLLAMA_MESSAGES = "application/vnd.ollama.image.messages"

MAX_MANIFEST_BYTES = 4 << 20


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: Digest
    size: int

    def to_json(self) -> dict:
        return {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}


@dataclass(frozen=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...]
    media_type: str = MANIFEST_V2

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        """Parse and validate manifest bytes; every digest is checked before use."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise InvalidManifestError("manifest larger than 4 MiB")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidManifestError(f"manifest is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
            raise InvalidManifestError("manifest is not schemaVersion 2")
        if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
            raise InvalidManifestError("manifest lacks config or layers")
        try:
            config = _layer(doc["config"])
            layers = tuple(_layer(item) for item in doc["layers"])
        except InvalidDigestError as exc:
            raise InvalidManifestError(str(exc)) from None
        return cls(config=config, layers=layers, media_type=doc.get("mediaType", MANIFEST_V2))

    def blobs(self) -> list[Layer]:
        """Config first, then layers, each digest once."""
        seen: set[str] = set()
        out: list[Layer] = []
        for layer in (self.config, *self.layers):
            if layer.digest.hex not in seen:
                seen.add(layer.digest.hex)
                out.append(layer)
        return out

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.blobs())

    def layer_of(self, media_type: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.media_type == media_type), None)

    def to_bytes(self) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def _layer(item: object) -> Layer:
    if not isinstance(item, dict):
        raise InvalidManifestError("manifest entry is not an object")
    size = item.get("size")
    media_type = item.get("mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifestError(f"manifest entry has invalid size {size!r}")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidManifestError("manifest entry lacks a mediaType")
    return Layer(media_type=media_type, digest=Digest.parse(item.get("digest")), size=size)
