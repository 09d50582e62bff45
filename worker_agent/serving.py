"""Which of this node's backends serve a model, and whether each answers for it once installed.

One rule for pulls and distributions (README "Distribution and backends"): a model goes into every
backend of the node that serves its format, and a backend that cannot is skipped with the reason;
a node none of whose backends can serve it fails with those reasons before a byte is downloaded
(`plan_*`, from the manifest or the file list). After the install each backend with an API is asked
whether it lists the model (`readiness`). The inventory the node publishes lists, per model, the
backends that serve it (`local_models`); a model only in the store is "stored, not served".

An Ollama-registry pull is served by Ollama from the store itself (the store is Ollama's); its GGUF
goes to llama.cpp (`<slug>.gguf`) and vLLM (`<slug>/<slug>.gguf`), the name scheme of distributions;
Triton and TGI are given safetensors and skip it with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from eldric.core.formats import detect_format
from eldric.core.manifests import OLLAMA_MODEL, Manifest
from eldric.core.names import ModelName
from eldric.core.request_errors import RequestError
from worker_agent import installers
from worker_agent.installers import BackendConfig, InstallError, InvalidModelError, UnsupportedModelError

log = logging.getLogger(__name__)

OLLAMA = "ollama"
NOT_SERVED = "stored, not served"  # the inventory's `backend` for a model no backend of the node serves
NO_API = "no API"  # readiness of a backend with no API to ask (or none configured)
NO_GGUF_LAYER = "the model has no GGUF layer (only Ollama serves it, from its store)"


@dataclass
class BackendPlan:
    """For one model: the backends that will get it (in ELDRIC_BACKENDS order) and those skipped, with why."""

    name: str
    format: str
    serving: dict[str, BackendConfig]
    skipped: dict[str, str] = field(default_factory=dict)
    order: tuple[str, ...] = ()

    def without(self, backend: str) -> BackendPlan:
        """The same plan for every backend but `backend` (it shares `skipped`, so later skips show in both)."""
        return BackendPlan(self.name, self.format, {b: c for b, c in self.serving.items() if b != backend},
                           self.skipped, self.order)

    def refusal(self) -> str:
        """The one error of a node whose backends can serve none of it."""
        reasons = "; ".join(f"{b}: {why}" for b, why in self.skipped.items())
        return f"no backend on this node can serve {self.name} ({self.format}): {reasons}"


def plan_backends(settings, name: str, model_format: str, paths: Collection[str],
                  taken: Mapping[str, str] | None = None) -> BackendPlan:
    """Sort the node's backends by whether they can serve a model of this format and these files
    (`taken`: backends to skip, with why); UnsupportedModelError naming each backend and why when none can."""
    configs = installers.backend_configs(settings)
    plan = BackendPlan(name, model_format, {}, {}, tuple(configs))
    for backend, config in configs.items():
        why = (taken or {}).get(backend) or installers.refusal(backend, model_format, paths)
        if why:
            plan.skipped[backend] = why
        else:
            plan.serving[backend] = config
    if configs and not plan.serving:
        raise UnsupportedModelError(plan.refusal())
    return plan


def plan_files(settings, name: str, declared: str | None, paths: Collection[str]) -> BackendPlan:
    """A file model (registry, URL, peer): its format from the declared one and its file names."""
    try:
        model_format = detect_format(list(paths), declared)
    except RequestError as exc:
        raise InvalidModelError(f"{name}: {exc}") from None
    return plan_backends(settings, name, model_format, paths)


def pulled_file(name: ModelName) -> str:
    """The GGUF's file name inside a pulled model, as the file backends get it: `<slug>.gguf`."""
    return f"{installers.model_slug(name.short)}.gguf"


def plan_pull(settings, name: ModelName, manifest: Manifest, taken: Mapping[str, str] | None = None) -> BackendPlan:
    """An Ollama-registry model: GGUF when its manifest has a model layer (`taken`: as for plan_backends)."""
    if manifest.layer_of(OLLAMA_MODEL) is not None:
        return plan_backends(settings, name.short, "gguf", [pulled_file(name)], taken)
    configs = installers.backend_configs(settings)
    plan = BackendPlan(name.short, "ollama", {b: c for b, c in configs.items() if b == OLLAMA},
                       {b: NO_GGUF_LAYER for b in configs if b != OLLAMA}, tuple(configs))
    if configs and not plan.serving:
        raise UnsupportedModelError(plan.refusal())
    return plan


def readiness(plan: BackendPlan, installed: dict[str, dict]) -> dict[str, bool | str]:
    """Ask each installed backend's API whether it lists the model: true, false, or "no API".

    Ollama's store serves a pull without Ollama's API, so Ollama is asked after a pull only when
    ELDRIC_OLLAMA_URL is set. An API that does not answer counts as false (logged with why): the
    files are in place, the server may just be down or need a restart to see them.
    """
    out: dict[str, bool | str] = {}
    for backend, result in installed.items():
        config = plan.serving.get(backend)
        if config is None or (result.get("ollama_store") and not config.options.get("url_configured")):
            out[backend] = NO_API
            continue
        try:
            answer = getattr(installers.installer_for(config), "is_serving", lambda *_: None)(
                plan.name, str(result.get("location") or ""))
        except InstallError as exc:
            log.warning("%s: could not ask %s whether it serves the model: %s", plan.name, backend, exc)
            answer = False
        if answer is False:
            log.info("%s: installed for %s, which does not list it yet", plan.name, backend)
        out[backend] = NO_API if answer is None else bool(answer)
    return out


def ollama_store_install(name: ModelName, manifest_path: str) -> dict:
    """How the Ollama backend got a pulled model: its store is Ollama's, nothing else to do."""
    return {"backend": OLLAMA, "model": name.short, "location": manifest_path, "ollama_store": True, "changed": True}


def local_models(agent) -> list[dict]:
    """The node's models (Ollama store, then file catalog), each with the backends that serve it.

    A store model is served by Ollama when Ollama is a backend here, and by each GGUF file backend
    (llama.cpp, vLLM) that has it installed under its name; a catalog model by the backends it was
    installed into that the node still serves.
    """
    configs = installers.backend_configs(agent.settings)
    files = agent.catalog.inventory()
    pulled = _pulled_backends(configs, files)
    out = []
    for model in agent.store.list_models():
        served = [b for b in configs if b == OLLAMA or _has(pulled.get(b), model["name"])]
        out.append(_with_backends(model, served))
    for model in files:
        served = [b for b in configs if b in model.get("backends", [])]
        out.append(_with_backends(model, served))
    return out


def catalog_claims(agent, name: ModelName) -> dict[str, str]:
    """Backends where a file model of the catalog has the pulled model's backend name, with why a pull
    leaves them alone (a distributed `tiny` and a pulled `tiny:latest` are both `tiny` there)."""
    slug = _slug(name.short)
    return {backend: f"its {slug} is the distributed file model {entry['name']}"
            for entry in agent.catalog.inventory() if _slug(entry["name"]) == slug
            for backend in entry.get("backends", []) if backend != OLLAMA}


def installed_from_pull(agent, name: ModelName) -> dict[str, dict]:
    """The file backends holding a pulled model (what its delete must uninstall)."""
    pulled = _pulled_backends(installers.backend_configs(agent.settings), agent.catalog.inventory())
    return {b: {} for b, installer in pulled.items() if _has(installer, name.short)}


def _pulled_backends(configs: dict[str, BackendConfig], files: list[dict]) -> dict[str, object]:
    """The installers of the backends a pull's GGUF goes to, less those where a file model of the
    catalog holds the same backend name (a distributed `tiny` and a pulled `tiny:latest` are both `tiny`):
    that file is the catalog's, neither served for the pull nor removed by its delete."""
    claimed: dict[str, set[str]] = {}
    for entry in files:  # the catalog's inventory: `backends` are those each file model was installed into
        for backend in entry.get("backends", []):
            claimed.setdefault(backend, set()).add(_slug(entry["name"]))
    out = {}
    for backend, config in configs.items():
        if backend == OLLAMA or installers.refusal(backend, "gguf", ["model.gguf"]):
            continue
        installer = _installer(config)
        if installer is not None:
            out[backend] = _Unclaimed(installer, claimed.get(backend, set()))
    return out


class _Unclaimed:
    """An installer's `is_installed`, false for names a catalog entry holds in that backend."""

    def __init__(self, installer, claimed: set[str]) -> None:
        self.installer, self.claimed = installer, claimed

    def is_installed(self, name: str) -> bool:
        return _slug(name) not in self.claimed and _has(self.installer, name)


def _slug(name: str) -> str | None:
    try:
        return installers.model_slug(name)
    except InstallError:
        return None


def _with_backends(model: dict, served: list[str]) -> dict:
    return {**model, "backends": served, "backend": ",".join(served) or NOT_SERVED}


def _installer(config: BackendConfig):
    try:
        return installers.installer_for(config)
    except InstallError as exc:
        log.warning("backend %s cannot be asked for its models: %s", config.backend, exc)
        return None


def _has(installer, name: str) -> bool:
    check = getattr(installer, "is_installed", None)
    return bool(check and check(name))
