"""Installing a downloaded model into the backends this node serves.

After the download engine has put a model's files on the node, `install(model,
config)` makes one backend serve it and checks that it does:

- `ollama`: Modelfile beside the model + blob upload and create through Ollama's API;
  checked in `/api/tags`.
- `vllm`: safetensors directory, GGUF or LoRA adapter under the serving path.
- `tgi`: safetensors plus tokenizer files (refused without them).
- `llamacpp`: GGUF into its models path, header checked.
- `triton`: `<repo>/<name>/<version>/…` with a generated `config.pbtxt`, loaded
  through the repository API; checked at `/v2/models/<name>/ready`.

Before any byte of a model moves, `refusal(backend, format, paths)` says whether a
backend can serve it at all (each installer module's `refusal`, which its install
checks too); after an install, `Installer.is_serving` asks the backend's API, where it
has one, whether it lists the model.

Every install is idempotent (a re-run changes nothing and copies nothing) and never
leaves a half-installed model a backend could load (see `staging`). With
`shared_path` (the model's files on shared storage, e.g. the registry's NFS export)
the backend is pointed at that path instead of receiving a copy.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from collections.abc import Callable, Collection, Mapping

from eldric.core.digests import Digest
from eldric.core.errors import EldricError, InvalidNameError
from eldric.core.formats import detect_format, gguf_info
from eldric.core.identifiers import validate_file_path
from eldric.core.request_errors import RequestError
from eldric.core.names import DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG, ModelName
from worker_agent.installers.staging import FileSpec, Placement, sha256_file

FORMATS = ("gguf", "safetensors", "lora")
_BLOB_NAME = re.compile(r"^sha256-[0-9a-f]{64}$")


class InstallError(EldricError):
    """An install that cannot be done; the message says why, for the job's error field."""


class UnsupportedModelError(InstallError):
    """This backend does not serve models of this format."""


class MissingFilesError(InstallError):
    """Files the backend needs are not part of the model (e.g. TGI without a tokenizer)."""


class InvalidModelError(InstallError):
    """The model's files are not what they claim to be (bad GGUF header, unsafe path)."""


class BackendError(InstallError):
    """The backend's API refused the install or did not show the model afterwards."""


class BackendUnavailableError(InstallError):
    """The backend's API could not be reached (connection refused, timeout): worth a retry."""


@dataclass(frozen=True)
class LocalModel:
    """A model whose files are on this node, as an installer needs to know it."""

    name: str  # a model name (`qwen2.5:0.5b`, `acme/llama-3-8b`); backends serve it under this name
    format: str  # gguf | safetensors | lora
    files: Mapping[str, Path]  # path inside the model ("model.gguf", "tokenizer.json") -> file on this node
    digests: Mapping[str, str] = field(default_factory=dict)  # known "sha256:<hex>" by path inside the model
    architecture: str | None = None  # GGUF general.architecture or config.json's architecture
    chat_template: str | None = None  # the GGUF's / tokenizer_config's chat template (Jinja)
    template: str | None = None  # an Ollama Go template shipped with the model, used as is
    system: str | None = None
    parameters: Mapping[str, object] = field(default_factory=dict)
    _hashed: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_files(cls, name: str, files: Mapping[str, str | os.PathLike], *, format: str | None = None,
                   digests: Mapping[str, str] | None = None, **extra) -> LocalModel:
        """Describe a model from its files; the format is checked and GGUF metadata read."""
        _check_name(name)
        paths: dict[str, Path] = {}
        for rel, path in files.items():
            try:
                paths[validate_file_path(rel, "files")] = Path(path)
            except RequestError as exc:
                raise InvalidModelError(str(exc)) from None
        try:
            fmt = detect_format(list(paths), format)
        except RequestError as exc:
            raise InvalidModelError(str(exc)) from None
        if fmt not in FORMATS:
            raise UnsupportedModelError(f"cannot install a model of format {fmt!r} (one of {', '.join(FORMATS)})")
        known = {rel: str(Digest.parse(d)) for rel, d in (digests or {}).items()}
        for rel, path in paths.items():  # a blob store's file name is its verified digest
            if rel not in known and _BLOB_NAME.match(path.name):
                known[rel] = str(Digest.parse(path.name))
        model = cls(name=name, format=fmt, files=paths, digests=known, **extra)
        if fmt == "gguf" and ("architecture" not in extra or "chat_template" not in extra):
            info = model.gguf_info()
            model = model.replace(architecture=extra.get("architecture", info.get("architecture")),
                                  chat_template=extra.get("chat_template", info.get("chat_template")))
        return model

    @classmethod
    def from_path(cls, name: str, path: str | os.PathLike, **kw) -> LocalModel:
        """A GGUF file, or a directory whose files (hidden ones aside) make up the model."""
        path = Path(path)
        if path.is_file():
            rel = path.name if path.suffix == ".gguf" else f"{model_slug(name)}.gguf"
            return cls.from_files(name, {rel: path}, **kw)
        if not path.is_dir():
            raise MissingFilesError(f"{path}: no such file or directory")
        files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*"))
                 if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}
        return cls.from_files(name, files, **kw)

    def replace(self, **changes) -> LocalModel:
        values = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "_hashed"}
        return LocalModel(**{**values, **changes})

    @property
    def slug(self) -> str:
        return model_slug(self.name)

    @property
    def gguf_file(self) -> tuple[str, Path]:
        """The model's main GGUF (a multimodal projector next to it is not the model)."""
        ggufs = sorted(rel for rel in self.files if rel.lower().endswith(".gguf"))
        main = [rel for rel in ggufs if "mmproj" not in rel.lower()] or ggufs
        if not main:
            raise UnsupportedModelError(f"{self.name} has no GGUF file")
        return main[0], self.files[main[0]]

    def gguf_info(self) -> dict:
        rel, path = self.gguf_file
        try:
            return gguf_info(rel, path)
        except RequestError as exc:
            raise InvalidModelError(str(exc)) from None

    def digest(self, rel: str) -> str:
        """The file's sha256: known from the download, or computed once."""
        if rel in self.digests:
            return self.digests[rel]
        if rel not in self._hashed:
            self._hashed[rel] = sha256_file(self.files[rel])
        return self._hashed[rel]

    def at(self, shared_path: str | os.PathLike) -> LocalModel:
        """The same model read from shared storage: a directory laid out like `files`, or the one file."""
        shared = Path(shared_path)
        if shared.is_file() and len(self.files) == 1:
            files = {rel: shared for rel in self.files}
        else:
            files = {rel: shared / rel for rel in self.files}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise MissingFilesError(f"shared path {shared} lacks {', '.join(missing[:5])}")
        # Local copies, when there are any, must be the same files (a cheap guard: sizes).
        wrong = [str(files[rel]) for rel, local in self.files.items()
                 if local.is_file() and local.stat().st_size != files[rel].stat().st_size]
        if wrong:
            raise InvalidModelError(f"shared path {shared}: {', '.join(wrong[:5])} differ in size from the model")
        return self.replace(files=files)

    def missing_files(self) -> list[str]:
        return [rel for rel, path in self.files.items() if not path.is_file()]


def model_slug(name: str) -> str:
    """A model's directory/file name in a backend: `qwen2.5:0.5b` -> `qwen2.5--0.5b`, `tiny` -> `tiny`."""
    n = _check_name(name)
    parts = [n.host] if n.host != DEFAULT_HOST else []
    parts += [n.namespace] if n.namespace != DEFAULT_NAMESPACE or parts else []
    parts += [n.model] + ([n.tag] if n.tag != DEFAULT_TAG else [])
    return "--".join(parts).replace(":", "_")  # a host's port


def _check_name(name: str) -> ModelName:
    try:
        return ModelName.parse(name)
    except InvalidNameError as exc:
        raise InvalidModelError(str(exc)) from None


def file_specs(model: LocalModel, *, shared: bool, prefix: str = "",
               only: Callable[[str], bool] = lambda rel: True) -> dict[str, FileSpec]:
    """How each model file gets into an install: copied (digest checked on the way) or, shared, linked."""
    specs = {}
    for rel, path in model.files.items():
        if only(rel):
            source = Path(os.path.abspath(path))
            specs[prefix + rel] = FileSpec(source=source, link=True) if shared \
                else FileSpec(source=source, digest=model.digest(rel))
    return specs


def placed(backend: str, model: LocalModel, placement: Placement, *, shared: bool, **details) -> InstallResult:
    return InstallResult(backend, model.name, str(placement.path), changed=placement.changed, shared=shared,
                         bytes_copied=placement.bytes_copied, files_linked=placement.files_linked,
                         copy_reason=placement.copy_reason if placement.bytes_copied else None, details=details)


READY_TIMEOUT = 10.0  # longest wait for a backend's answer to "do you list this model?"


@dataclass(frozen=True)
class BackendConfig:
    """Where one backend on this node keeps its models and/or answers its API."""

    backend: str
    models_dir: Path | None = None
    url: str | None = None
    timeout: float = 600.0
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def ready_timeout(self) -> float:
        return min(self.timeout, READY_TIMEOUT)


@dataclass(frozen=True)
class InstallResult:
    backend: str
    model: str  # the name the backend serves it under
    location: str  # the file, directory or API model the backend now has
    changed: bool  # False when everything was already in place
    shared: bool = False  # the backend points at shared storage; no bytes were copied
    bytes_copied: int = 0  # bytes copied or uploaded to the backend
    files_linked: int = 0  # files placed as hard links to the blob store (one copy per node)
    copy_reason: str | None = None  # why bytes were copied rather than linked (other filesystem, an API upload)
    details: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"backend": self.backend, "model": self.model, "location": self.location,
               "changed": self.changed, "shared": self.shared, "bytes_copied": self.bytes_copied,
               "files_linked": self.files_linked, "details": dict(self.details)}
        if self.copy_reason:
            out["copy_reason"] = self.copy_reason
        return out


class Installer(Protocol):
    """One backend's installer, built from its BackendConfig."""

    backend: str

    def install(self, model: LocalModel, *, shared: bool = False) -> InstallResult:
        """Install `model`; with `shared`, point the backend at model.files instead of copying them."""
        ...

    def uninstall(self, name: str) -> bool: ...

    def is_serving(self, name: str, location: str) -> bool | None:
        """Does the backend's API list the installed model (`location`: InstallResult.location)? None: no API."""
        ...


_INSTALLERS: dict[str, str | Callable[[BackendConfig], Installer]] = {
    "ollama": "worker_agent.installers.ollama",
    "vllm": "worker_agent.installers.vllm",
    "tgi": "worker_agent.installers.tgi",
    "llamacpp": "worker_agent.installers.llamacpp",
    "triton": "worker_agent.installers.triton",
}


def register(backend: str, factory: Callable[[BackendConfig], Installer]) -> None:
    """Add (or replace) the installer used for `backend`."""
    _INSTALLERS[backend] = factory


def backends() -> tuple[str, ...]:
    return tuple(_INSTALLERS)


def _factory(backend: str) -> Callable[[BackendConfig], Installer]:
    factory = _INSTALLERS.get(backend)
    if factory is None:
        raise UnsupportedModelError(f"no installer for backend {backend!r} (known: {', '.join(_INSTALLERS)})")
    if isinstance(factory, str):
        factory = importlib.import_module(factory).Installer  # each module's class is named Installer
        _INSTALLERS[backend] = factory
    return factory


def installer_for(config: BackendConfig) -> Installer:
    """The installer for `config.backend`; modules are imported on first use."""
    return _factory(config.backend)(config)


def refusal(backend: str, model_format: str, paths: Collection[str]) -> str | None:
    """Why `backend` cannot serve a model of this format with these files, known before any byte moves
    (None: it may; the install checks the files themselves). An installer without a `refusal` decides at install."""
    if model_format not in FORMATS:
        return f"cannot install a model of format {model_format!r} (one of {', '.join(FORMATS)})"
    check = getattr(_factory(backend), "refusal", None)
    return check(model_format, paths) if check is not None else None


def install(model: LocalModel, config: BackendConfig, *, shared_path: str | os.PathLike | None = None) -> InstallResult:
    """Make `config.backend` serve `model`, then check that it does.

    `shared_path`: the model's files on shared storage (a directory laid out like
    `model.files`, or the single file); the backend is pointed there, nothing is copied.
    """
    installer = installer_for(config)
    _check_name(model.name)
    if model.format not in FORMATS:
        raise UnsupportedModelError(f"cannot install a model of format {model.format!r} (one of {', '.join(FORMATS)})")
    for rel in model.files:  # paths inside the model become paths under the backend's directory
        try:
            validate_file_path(rel, "files")
        except RequestError as exc:
            raise InvalidModelError(str(exc)) from None
    if shared_path is not None:
        model = model.at(shared_path)
    missing = model.missing_files()
    if missing:
        raise MissingFilesError(f"{model.name}: files not on this node: {', '.join(missing[:5])}")
    return installer.install(model, shared=shared_path is not None)


def uninstall(name: str, config: BackendConfig) -> bool:
    """Remove the model from `config.backend`; False if it was not installed there."""
    _check_name(name)
    return installer_for(config).uninstall(name)


def backend_configs(settings) -> dict[str, BackendConfig]:
    """Each backend this node serves (settings.backends) with its directory and API address."""
    data = Path(settings.data_dir) / "backends"
    known = {
        "ollama": BackendConfig("ollama", models_dir=data / "ollama", url=settings.ollama_url,
                                # a pull asks Ollama only when told where it is (the store is Ollama's either way)
                                options={"url_configured": "ollama_url" in getattr(settings, "model_fields_set", ())}),
        "vllm": BackendConfig("vllm", models_dir=Path(settings.vllm_models_dir or data / "vllm"),
                              url=settings.vllm_url or None),
        "tgi": BackendConfig("tgi", models_dir=Path(settings.tgi_models_dir or data / "tgi")),
        "llamacpp": BackendConfig("llamacpp", models_dir=Path(settings.llamacpp_models_dir or data / "llamacpp"),
                                  url=settings.llamacpp_url or None),
        "triton": BackendConfig("triton", models_dir=Path(settings.triton_repository or data / "triton"),
                                url=settings.triton_url),
    }
    out = {}
    for name in settings.backends:
        if name not in known:
            raise InstallError(f"unknown backend {name!r} in ELDRIC_BACKENDS (known: {', '.join(known)})")
        out[name] = dataclasses.replace(known[name], timeout=settings.backend_timeout_seconds)
    return out
