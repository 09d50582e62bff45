"""`POST /api/create` with safetensors files: a registry file model, distributed to the workers' file backends.

Ollama converts uploaded safetensors into a GGUF; the cluster does not convert. It serves safetensors as they
are, through vLLM, TGI and Triton (README "Distribution and backends"), so such a create becomes a model of
the data node's registry: a draft named after the model (`ns/name:tag` -> name `ns/name`, version `tag`;
the `library/` namespace dropped), each uploaded blob linked into it by digest (the registry's one blob
store holds the bytes /api/blobs put there: nothing is sent again), committed (which checks the files: a
`config.json` and a `.safetensors`), then distributed with source `registry` to every inference and cloud
worker. A refusal before the commit deletes the draft, so nothing is left behind; a version that exists is
the registry's 409 (a file model's versions are immutable, unlike an Ollama tag).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

from controller.distribute import start_distribute
from controller.model_create import Cluster, distribution
from controller.registry_client import RegistryClient, error_message
from eldric.core.create_requests import CreateSpec
from eldric.core.request_errors import BadRequestError, ConflictError, NotFoundError, RequestError
from eldric.transfer.model_registry import API_PREFIX, model_path


class RegistryAnswerError(RequestError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def registry_reference(spec: CreateSpec) -> tuple[str, str]:
    """(registry model name, version) of a created name."""
    name = spec.name.model if spec.name.namespace == "library" else spec.name.repository
    return name, spec.name.tag


def prepare_files(spec: CreateSpec) -> None:
    """What can be refused without asking anyone."""
    if spec.base:
        raise BadRequestError("a safetensors create takes no 'from': its files are the whole model", field="from")
    if spec.adapters or spec.template or spec.system or spec.parameters or spec.messages or spec.license:
        raise BadRequestError("a safetensors model is served by vLLM, TGI or Triton as uploaded: template, system, "
                              "parameters, messages, license and adapters apply to GGUF models only", field="files")


def create_file_model(spec: CreateSpec, registry: RegistryClient) -> dict:
    """The committed registry model (its record); on any refusal the draft is deleted first."""
    name, version = registry_reference(spec)
    draft = _call(registry, "POST", API_PREFIX, json={"name": name, "version": version, "format": "safetensors",
                                                      "source": "upload"}, ok=(201,))
    try:
        for path, digest in sorted(spec.files.items()):
            _call(registry, "PUT", model_path(draft["id"], "files", quote(path)), query=f"digest={digest}", body=b"",
                  ok=(200, 201))
        return _call(registry, "POST", model_path(draft["id"], "commit"), ok=(200, 201))
    except BaseException:
        registry.send("DELETE", model_path(draft["id"])).close()  # the draft goes: nothing is left behind
        raise


def run_files(spec: CreateSpec, model: dict, cluster: Cluster, registry: RegistryClient) -> Iterator[dict]:
    """Ollama's statuses for the linked files, then the distribution of the committed model."""
    for digest in sorted(str(d) for d in spec.files.values()):
        yield {"status": f"using existing layer {digest}"}
    yield {"status": "writing manifest"}
    job_id = start_distribute(cluster.redis, cluster.producer, registry, model=model["id"],
                              source={"type": "registry"}, workers=None, limits=cluster.limits)
    size = sum(int(f.get("size") or 0) for f in model.get("files") or [])
    yield from distribution(job_id, cluster, str(spec.files[sorted(spec.files)[0]]), size)


def _call(registry: RegistryClient, method: str, path: str, *, ok: tuple[int, ...], query: str = "",
          json: dict | None = None, body: bytes | None = None) -> dict:
    resp = registry.send(method, path, query=query, json=json, body=body,
                         headers={"Content-Length": "0"} if body == b"" else None)
    with resp:
        if resp.status_code in ok:
            return resp.json()
        message = f"the cluster's registry refused ({resp.status_code}): {error_message(resp)}"
        if resp.status_code in (400, 422):
            raise BadRequestError(message, field="files")
        if resp.status_code == 404:
            raise NotFoundError(message, field="files")
        if resp.status_code == 409:
            raise ConflictError(message)
        raise RegistryAnswerError(message, resp.status_code if resp.status_code in (413, 503, 507) else 502)
