"""Committed GGUF models of the registry, shown through /v2/ as Ollama models.

Naming: a registry model `namespace/name:version` is the repository `namespace/name`
with tag `version`; a model without a namespace (`tiny:v1`) is `library/tiny:v1`, the
name Ollama gives `tiny:v1` (so `ollama pull --insecure data-node:8892/tiny:v1` works).
The tag `latest` names the version called `latest` if there is one, else the newest
committed version. A pushed or imported tag of the same name wins over a registry model.

The manifest is built from the catalog, never stored: model layer = the model's GGUF
blob (already in the blob store); template layer = the GGUF's `tokenizer.chat_template`
mapped to the family's Ollama Go template (eldric/core/chat_templates.py); params layer =
that family's stop tokens; the config blob is Ollama's (`model_format`, `model_family`,
`model_type`, `file_type`, `rootfs`). The small blobs are stored once (origin `derived`).
"""

from __future__ import annotations

import json

from eldric.core.chat_templates import choose_template
from eldric.core.digests import Digest
from eldric.core.formats import parameter_size_label
from eldric.core.manifests import CONFIG, MANIFEST_V2, OLLAMA_MODEL, OLLAMA_PARAMS, OLLAMA_TEMPLATE
from registry.catalog import READY, Catalog
from registry.oci.store import DERIVED, OCIStore, StoredManifest, is_digest_reference

DEFAULT_NAMESPACE = "library"


def model_name_of(repo: str) -> str:
    """The registry model name a repository shows: `library/x` -> `x`, `ns/x` -> `ns/x`."""
    namespace, _, name = repo.rpartition("/")
    return name if namespace == DEFAULT_NAMESPACE else repo


def repository_of(model_name: str) -> str:
    return model_name if "/" in model_name else f"{DEFAULT_NAMESPACE}/{model_name}"


class RegistryModels:
    def __init__(self, catalog: Catalog, store: OCIStore) -> None:
        self.catalog, self.store = catalog, store

    def _versions(self, name: str) -> list[dict]:
        """Ready GGUF models of `name`, newest first, with their files."""
        found, _ = self.catalog.list_models(name=name, fmt="gguf", limit=1000)
        return [m for m in found if m["state"] == READY]

    def manifest(self, repo: str, reference: str) -> StoredManifest | None:
        if repo.count("/") != 1:
            return None
        versions = self._versions(model_name_of(repo))
        if is_digest_reference(reference):
            for model in versions:
                built = self._build(repo, model)
                if built is not None and built.digest == reference:
                    return built
            return None
        chosen = next((m for m in versions if m["version"] == reference), None)
        if chosen is None and reference == "latest" and versions:
            chosen = versions[0]
        return self._build(repo, chosen) if chosen else None

    def tags(self, repo: str) -> list[str]:
        if repo.count("/") != 1:
            return []
        versions = [m["version"] for m in self._versions(model_name_of(repo)) if _model_file(m)]
        return sorted(set(versions) | ({"latest"} if versions else set()))

    def repositories(self) -> list[str]:
        rows = self.catalog.connection().execute(
            "SELECT DISTINCT name FROM models WHERE state = ? AND format = 'gguf'", (READY,))
        return sorted(repository_of(r[0]) for r in rows)

    def _build(self, repo: str, model: dict) -> StoredManifest | None:
        gguf = _model_file(model)
        if gguf is None:
            return None
        details = model["details"] or {}
        choice = choose_template(go_template=None, chat_template=details.get("chat_template"),
                                 architecture=details.get("architecture"))
        layers = [{"mediaType": OLLAMA_MODEL, "digest": gguf["digest"], "size": gguf["size"]}]
        if choice.template:
            layers.append(self._derived(OLLAMA_TEMPLATE, choice.template.encode()))
        if choice.stop:
            layers.append(self._derived(OLLAMA_PARAMS, json.dumps({"stop": list(choice.stop)}).encode()))
        family = details.get("architecture") or ""
        config = {"model_format": "gguf", "model_family": family, "model_families": [family] if family else None,
                  "model_type": parameter_size_label(details.get("parameter_count")),
                  "file_type": details.get("file_type") or "", "architecture": "amd64", "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}}
        config_layer = self._derived(CONFIG, json.dumps(config).encode())
        body = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2, "config": config_layer,
                           "layers": layers}).encode()
        return StoredManifest(repo, str(Digest.of_bytes(body)), MANIFEST_V2, body, "registry")

    def _derived(self, media_type: str, data: bytes) -> dict:
        digest = Digest.of_bytes(data)
        if self.store.blob_size(digest) is None:
            f, tmp = self.store.blobs.temp_file()
            with f:
                f.write(data)
            self.store.add_blob(tmp, digest, len(data), DERIVED)
        return {"mediaType": media_type, "digest": str(digest), "size": len(data)}


def _model_file(model: dict) -> dict | None:
    """The model's one GGUF file (a split or multi-file GGUF model is not an Ollama model)."""
    ggufs = [f for f in model["files"] if f["path"].lower().endswith(".gguf")]
    if any(((f.get("info") or {}).get("split_count") or 0) > 1 for f in ggufs):
        return None  # Ollama's model layer is one whole GGUF
    main = (model["details"] or {}).get("model_file")
    chosen = next((f for f in ggufs if f["path"] == main), None) if main else None
    if chosen is None and len(ggufs) == 1:
        chosen = ggufs[0]
    return chosen
