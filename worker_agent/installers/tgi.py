"""Text Generation Inference: a safetensors model directory with its tokenizer.

TGI loads a local model with `--model-id <dir>` and needs config.json, the
safetensors weights and the tokenizer beside them (tokenizer.json, or a
SentencePiece tokenizer.model, or GPT-2 style vocab.json + merges.txt). A model
without a tokenizer would install fine and fail when TGI starts, so it is refused
here with the files it lacks. LoRA adapters go in the same place (`--lora-adapters`).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from worker_agent.installers import (BackendConfig, InstallError, InstallResult, LocalModel, MissingFilesError,
                                     UnsupportedModelError, file_specs, model_slug, placed)
from worker_agent.installers.staging import place_dir, remove_entry

BACKEND = "tgi"
TOKENIZER_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))


def refusal(model_format: str, paths: Collection[str]) -> str | None:
    """Why TGI cannot serve a model of this format (None: it can; missing tokenizer files fail the install)."""
    if model_format not in ("safetensors", "lora"):
        return f"TGI serves safetensors models; this one is {model_format}"
    return None


def missing_tokenizer(model: LocalModel) -> str | None:
    """None if the model has a tokenizer TGI can load, else what it should have."""
    names = {Path(rel).name for rel in model.files if "/" not in rel}
    if any(all(n in names for n in group) for group in TOKENIZER_SETS):
        return None
    return " or ".join(" + ".join(group) for group in TOKENIZER_SETS)


class Installer:
    backend = BACKEND
    refusal = staticmethod(refusal)

    def __init__(self, config: BackendConfig) -> None:
        if not config.models_dir:
            raise InstallError("the tgi backend needs its models directory (ELDRIC_TGI_MODELS_DIR)")
        self.models_dir = Path(config.models_dir)

    def install(self, model: LocalModel, *, shared: bool = False) -> InstallResult:
        refused = refusal(model.format, list(model.files))
        if refused:
            raise UnsupportedModelError(f"{model.name}: {refused}")
        if model.format == "safetensors":
            wanted = missing_tokenizer(model)
            if wanted:
                have = ", ".join(sorted(model.files))
                raise MissingFilesError(f"{model.name}: TGI needs the model's tokenizer files ({wanted}) next to "
                                        f"config.json; the model has only: {have}")
        dest = self.models_dir / model.slug
        placement = place_dir(dest, file_specs(model, shared=shared))
        placement.commit()
        flag = "--lora-adapters" if model.format == "lora" else "--model-id"
        return placed(BACKEND, model, placement, shared=shared, format=model.format, serve=f"{flag} {dest}")

    def is_installed(self, name: str) -> bool:
        return (self.models_dir / model_slug(name)).is_dir()

    def is_serving(self, name: str, location: str) -> bool | None:
        return None  # TGI serves the one model it was started with; no API to ask about another

    def uninstall(self, name: str) -> bool:
        return remove_entry(self.models_dir / model_slug(name))
