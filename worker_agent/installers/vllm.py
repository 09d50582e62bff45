"""vLLM: the model's files under the serving path, one directory per model.

`<vllm models dir>/<name>/` holds a safetensors model (config.json, weights,
tokenizer), a GGUF file, or a LoRA adapter, exactly as vLLM reads a local model:
`vllm serve <dir>` (`vllm serve <dir>/<file>.gguf --tokenizer <base model>` for
GGUF; `--lora-modules name=<dir>` for an adapter). vLLM has no API to add a model
to a running server, so the check is on disk: the directory is complete or absent.
"""

from __future__ import annotations

from pathlib import Path

from worker_agent.installers import (BackendConfig, InstallError, InstallResult, LocalModel, file_specs,
                                     model_slug, placed)
from worker_agent.installers.openai_models import is_listed
from worker_agent.installers.staging import place_dir, remove_entry

BACKEND = "vllm"


class Installer:
    backend = BACKEND

    def __init__(self, config: BackendConfig) -> None:
        if not config.models_dir:
            raise InstallError("the vllm backend needs its models directory (ELDRIC_VLLM_MODELS_DIR)")
        self.models_dir = Path(config.models_dir)
        self.config = config

    def install(self, model: LocalModel, *, shared: bool = False) -> InstallResult:
        if model.format == "gguf":
            model.gguf_info()  # refuses a broken header before anything is copied
        dest = self.models_dir / model.slug
        placement = place_dir(dest, file_specs(model, shared=shared))
        placement.commit()
        target = dest / model.gguf_file[0] if model.format == "gguf" else dest
        serve = f"--lora-modules {model.slug}={dest}" if model.format == "lora" else f"vllm serve {target}"
        return placed(BACKEND, model, placement, shared=shared, format=model.format, serve=serve)

    def is_installed(self, name: str) -> bool:
        return (self.models_dir / model_slug(name)).is_dir()

    def is_serving(self, name: str, location: str) -> bool | None:
        """vLLM's /v1/models (ELDRIC_VLLM_URL) lists it; None when no server is configured."""
        if not self.config.url:
            return None
        return is_listed(self.config.url, name, location, self.config.ready_timeout)

    def uninstall(self, name: str) -> bool:
        return remove_entry(self.models_dir / model_slug(name))
