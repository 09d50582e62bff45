"""llama.cpp: GGUF files in its models path, header checked first.

One GGUF becomes `<models dir>/<name>.gguf` (what `llama-server -m` and a models
directory expect). A split model (`-00001-of-0000N.gguf` shards) or a model with a
multimodal projector keeps its file names in `<models dir>/<name>/`, because
llama.cpp finds the other shards by name next to the first. Every file's header is
read before anything is copied: magic `GGUF`, a version llama.cpp reads (2 or 3),
and tensor data that fits the file (not truncated).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from eldric.core.formats import gguf_info
from eldric.core.request_errors import RequestError
from worker_agent.installers import (BackendConfig, InstallError, InstallResult, InvalidModelError, LocalModel,
                                     UnsupportedModelError, file_specs, model_slug, placed)
from worker_agent.installers.openai_models import is_listed
from worker_agent.installers.staging import place_dir, place_file, remove_entry

BACKEND = "llamacpp"


def refusal(model_format: str, paths: Collection[str]) -> str | None:
    """Why llama.cpp cannot serve a model of this format and these files (None: it can)."""
    if model_format != "gguf" or not any(p.lower().endswith(".gguf") for p in paths):
        return f"llama.cpp serves GGUF files; this model is {model_format}"
    return None


def check_gguf(rel: str, path: Path) -> dict:
    """The file's GGUF facts; InvalidModelError if it is not a complete GGUF v2/v3 file."""
    try:
        return gguf_info(rel, path)
    except RequestError as exc:
        raise InvalidModelError(f"llama.cpp cannot load it: {exc}") from None


class Installer:
    backend = BACKEND
    refusal = staticmethod(refusal)

    def __init__(self, config: BackendConfig) -> None:
        if not config.models_dir:
            raise InstallError("the llamacpp backend needs its models directory (ELDRIC_LLAMACPP_MODELS_DIR)")
        self.models_dir = Path(config.models_dir)
        self.config = config

    def install(self, model: LocalModel, *, shared: bool = False) -> InstallResult:
        ggufs = sorted(rel for rel in model.files if rel.lower().endswith(".gguf"))
        refused = refusal(model.format, list(model.files))
        if refused:
            raise UnsupportedModelError(f"{model.name}: {refused}")
        infos = {rel: check_gguf(rel, model.files[rel]) for rel in ggufs}
        specs = file_specs(model, shared=shared, only=lambda rel: rel in infos)
        if len(specs) == 1:
            (spec,) = specs.values()
            placement = place_file(self.models_dir / f"{model.slug}.gguf", spec)
            main = placement.path
        else:  # shards and projectors are found by name beside the main file
            flat = {Path(rel).name: spec for rel, spec in specs.items()}
            if len(flat) != len(specs):
                raise InvalidModelError(f"{model.name}: two GGUF files share a file name in different folders")
            placement = place_dir(self.models_dir / model.slug, flat)
            main = placement.path / Path(model.gguf_file[0]).name
        placement.commit()
        info = infos[model.gguf_file[0]]
        return placed(BACKEND, model, placement, shared=shared, serve=f"llama-server -m {main}",
                      gguf_version=info.get("gguf_version"), architecture=info.get("architecture"))

    def is_installed(self, name: str) -> bool:
        slug = model_slug(name)
        return (self.models_dir / f"{slug}.gguf").is_file() or (self.models_dir / slug).is_dir()

    def is_serving(self, name: str, location: str) -> bool | None:
        """llama-server's /v1/models (ELDRIC_LLAMACPP_URL) lists it; None when no server is configured."""
        if not self.config.url:
            return None
        return is_listed(self.config.url, name, location, self.config.ready_timeout)

    def uninstall(self, name: str) -> bool:
        slug = model_slug(name)
        removed_file = remove_entry(self.models_dir / f"{slug}.gguf")
        removed_dir = remove_entry(self.models_dir / slug)
        return removed_file or removed_dir
