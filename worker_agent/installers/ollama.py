"""Ollama: a Modelfile for operators, then blob upload + create through Ollama's HTTP API.

Ollama's documented API (docs/api.md) with the official `ollama` client:
`HEAD /api/blobs/<digest>` (200 present, 404 missing) -> `create_blob(path)`, i.e.
`POST /api/blobs/<digest>` (201; 400 when the bytes do not hash to the digest) ->
`create(model, files={name: digest}, template, system, parameters)` -> `GET /api/tags`
must list the model. Ollama keeps its own copy of every blob and its API cannot
point at a file elsewhere, so with shared storage the GGUF is read from the shared
path and uploaded: results say `shared: false`, `details.read_from_shared: true`.

Idempotence: a blob Ollama already has is never uploaded again; and when the last
install's request (recorded beside the Modelfile) is unchanged and `/api/tags` still
shows the digest it produced, nothing is sent at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path

import httpx
import ollama
import requests

from eldric.core.names import ModelName
from eldric.core.atomicfile import write_atomically
from eldric.core.chat_templates import TemplateChoice, choose_template
from eldric.core.redaction import redact_url, redact_urls
from eldric.transfer.http import http_session
from worker_agent.installers import (BackendConfig, BackendError, BackendUnavailableError, InstallResult,
                                     LocalModel, UnsupportedModelError, model_slug)

BACKEND = "ollama"
MODELFILE = "Modelfile"
STATE = ".eldric-ollama.json"
UPLOAD_REASON = "uploaded through Ollama's API, which keeps its own copy"


def served_name(name: str) -> str:
    """The name Ollama lists the model under (`tiny` -> `tiny:latest`)."""
    return ModelName.parse(name).short


def template_for(model: LocalModel) -> TemplateChoice:
    return choose_template(go_template=model.template, chat_template=model.chat_template,
                           architecture=model.architecture)


def refusal(model_format: str, paths: Collection[str]) -> str | None:
    """Why Ollama cannot serve a model of this format (None: it can)."""
    if model_format != "gguf":
        return f"Ollama installs GGUF models; this one is {model_format} (serve it with vllm or tgi, or convert it to GGUF)"
    return None


def create_request(model: LocalModel) -> dict:
    """The body of POST /api/create, without the blob digests' file contents."""
    refused = refusal(model.format, list(model.files))
    if refused:
        raise UnsupportedModelError(f"{model.name}: {refused}")
    choice = template_for(model)
    parameters = dict(model.parameters)
    if choice.stop and "stop" not in parameters:
        parameters["stop"] = list(choice.stop)
    request: dict = {"model": served_name(model.name),
                     "files": {Path(rel).name: model.digest(rel) for rel in _gguf_files(model)}}
    if choice.template is not None:
        request["template"] = choice.template
    if model.system:
        request["system"] = model.system
    if parameters:
        request["parameters"] = parameters
    return request


def render_modelfile(model: LocalModel, request: dict) -> str:
    """The Modelfile equivalent of `request`, for operators (`ollama create NAME -f Modelfile`)."""
    lines = [f"# {request['model']}: installed by Eldric through Ollama's API (POST /api/create).",
             f"# To recreate by hand: ollama create {request['model']} -f Modelfile"]
    lines += [f"FROM {path}" for rel, path in model.files.items() if rel in _gguf_files(model)]
    if "template" in request:
        lines.append(f"TEMPLATE {_quote(request['template'])}")
    for key, value in (request.get("parameters") or {}).items():
        for item in (value if isinstance(value, list) else [value]):
            lines.append(f"PARAMETER {key} {_quote(item) if isinstance(item, str) else json.dumps(item)}")
    if "system" in request:
        lines.append(f"SYSTEM {_quote(request['system'])}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    if "\n" not in text and '"' not in text:
        return json.dumps(text)
    if '"""' not in text:
        return f'"""{text}"""'
    return json.dumps(text)  # Ollama's parser accepts escaped quotes in a "..." string


def _gguf_files(model: LocalModel) -> list[str]:
    return sorted(rel for rel in model.files if rel.lower().endswith(".gguf")) or [model.gguf_file[0]]


class Installer:
    backend = BACKEND
    refusal = staticmethod(refusal)

    def __init__(self, config: BackendConfig) -> None:
        if not config.url or not config.models_dir:
            raise BackendError("the ollama backend needs its API URL and a directory for Modelfiles")
        self.config = config
        self.url = config.url.rstrip("/")
        self.client = ollama.Client(host=self.url, timeout=config.timeout)
        self.http = http_session()  # for what the ollama client lacks (HEAD of a blob); Ollama runs beside the agent

    def modelfile_dir(self, model: LocalModel) -> Path:
        return Path(self.config.models_dir) / model.slug

    def install(self, model: LocalModel, *, shared: bool = False) -> InstallResult:
        request = create_request(model)
        name = request["model"]
        folder = self.modelfile_dir(model)
        modelfile = folder / MODELFILE
        _write_if_changed(modelfile, render_modelfile(model, request).encode())
        request_hash = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        before = self._tags().get(name)
        state = _read_json(folder / STATE)
        details = {"modelfile": str(modelfile), "template": template_for(model).source, "uploaded": [],
                   "read_from_shared": shared}
        if before and state.get("request") == request_hash and state.get("digest") == before:
            return InstallResult(BACKEND, name, f"{redact_url(self.url)}/api/tags#{name}", changed=False,
                                 details={**details, "digest": before})
        uploaded = 0
        for rel in _gguf_files(model):
            digest = request["files"][Path(rel).name]
            if not self._has_blob(digest):
                uploaded += self._upload(model.files[rel], digest)
                details["uploaded"].append(digest)
        self._call(lambda: self.client.create(stream=False, **_client_args(request)), f"create {name}")
        after = self._tags().get(name)
        if after is None:
            raise BackendError(f"Ollama answered create for {name} but /api/tags does not list it")
        _write_if_changed(folder / STATE, json.dumps({"request": request_hash, "digest": after}).encode())
        return InstallResult(BACKEND, name, f"{redact_url(self.url)}/api/tags#{name}", changed=(after != before or uploaded > 0),
                             bytes_copied=uploaded, copy_reason=UPLOAD_REASON if uploaded else None,
                             details={**details, "digest": after})

    def is_serving(self, name: str, location: str) -> bool | None:
        """POST /api/show answers for the model (Ollama reads its store on every request)."""
        try:
            r = self.http.post(f"{self.url}/api/show", json={"model": served_name(name)},
                               timeout=self.config.ready_timeout)
        except requests.RequestException as exc:
            raise BackendUnavailableError(f"Ollama at {redact_url(self.url)} unreachable: {redact_urls(str(exc))}") from None
        if r.status_code >= 500:
            raise BackendUnavailableError(f"Ollama answered {r.status_code} to /api/show for {name}")
        return r.status_code == 200

    def uninstall(self, name: str) -> bool:
        name = served_name(name)
        try:
            self.client.delete(name)
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                return False
            raise BackendError(f"Ollama refused to delete {name}: {exc.error}") from None
        except (ConnectionError, httpx.HTTPError) as exc:
            raise BackendUnavailableError(f"Ollama at {redact_url(self.url)} unreachable: {redact_urls(str(exc))}") from None
        (Path(self.config.models_dir) / model_slug(name) / STATE).unlink(missing_ok=True)
        return True

    def _tags(self) -> dict[str, str]:
        """Model name -> digest, from GET /api/tags."""
        listing = self._call(self.client.list, "list models")
        return {m.model: m.digest for m in listing.models if m.model}

    def _has_blob(self, digest: str) -> bool:
        try:
            r = self.http.head(f"{self.url}/api/blobs/{digest}", timeout=self.config.timeout)
        except requests.RequestException as exc:
            raise BackendUnavailableError(f"Ollama at {redact_url(self.url)} unreachable: {redact_urls(str(exc))}") from None
        if r.status_code not in (200, 404):
            raise BackendError(f"Ollama answered HEAD /api/blobs/{digest} with {r.status_code}")
        return r.status_code == 200

    def _upload(self, path: Path, digest: str) -> int:
        sent = self._call(lambda: self.client.create_blob(path), f"upload {path.name}")
        if sent != digest:  # the file changed under us since its digest was taken
            raise BackendError(f"{path}: uploaded as {sent}, but the model says {digest}")
        return path.stat().st_size

    def _call(self, fn, what: str):
        try:
            return fn()
        except ollama.ResponseError as exc:
            raise BackendError(f"Ollama refused to {what}: {exc.error} (HTTP {exc.status_code})") from None
        except (ConnectionError, httpx.HTTPError) as exc:
            raise BackendUnavailableError(f"Ollama at {redact_url(self.url)} unreachable ({what}): {redact_urls(str(exc))}") from None


def _client_args(request: dict) -> dict:
    return {k: request[k] for k in ("model", "files", "template", "system", "parameters") if k in request}


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    write_atomically(path, data)
