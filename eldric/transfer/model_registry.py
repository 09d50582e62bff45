"""The model registry's REST API as each of its clients calls it: where it lives, its routes, the session.

The registry serves the routes below API_PREFIX (registry/api.py, with the schemas of
eldric/cluster/registry_api.py); the controller mirrors them path for path. Four callers speak it,
and each words answers and failures its own way: the registry SDK (eldric/client/registry.py), the
controller's proxy (controller/registry_client.py), the agents' file-model source
(worker_agent/file_sources.py) and the mirror update check (eldric/cluster/mirror_updates.py). None
builds a registry URL or an Authorization header of its own: the paths and `ModelRegistryApi` are here.
It sits in the transfer layer so that all four may import it.
"""

from __future__ import annotations

from urllib.parse import quote

import requests

from eldric.transfer.http import bearer, http_session

API_PREFIX = "/api/v1/model-registry"
IMPORTS_PATH = f"{API_PREFIX}/imports"
UPLOAD_FILE_PATH = f"{API_PREFIX}/upload"  # a single-file model in one request
MIRROR_CHECK_PATH = f"{API_PREFIX}/mirror/check"
_VERBS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


def model_path(model_id: str, *rest: str) -> str:
    """`<prefix>/<id>[/<rest>...]`, the id escaped whole: whatever it holds, it names no other route."""
    return "/".join((API_PREFIX, quote(model_id, safe=""), *rest))


def file_path(model_id: str, path: str) -> str:
    """A file of a model; its path keeps its slashes, any other special character is escaped."""
    return model_path(model_id, "files", quote(path))


def upload_path(upload_id: str) -> str:
    """An upload session (its offset, its chunks, its end)."""
    return f"{API_PREFIX}/uploads/{quote(upload_id, safe='')}"


class ModelRegistryApi:
    """One registry's API, the data node's or the controller's mirror of it: base URL, session, bearer token."""

    def __init__(self, base_url: str, token: str = "", session: requests.Session | None = None,
                 timeout: tuple[float, float] = (5, 600)) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or http_session()
        self.headers = bearer(token)
        self.timeout = timeout

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw) -> requests.Response:
        """The registry's answer to `method path`, whatever its status; requests' own errors pass to the caller."""
        url, headers = self.url(path), {**self.headers, **(headers or {})}
        kw.setdefault("timeout", self.timeout)
        if method in _VERBS:  # session.post(...) is session.request("POST", ...); a stand-in offers just its verbs
            return getattr(self.session, method.lower())(url, headers=headers, **kw)
        return self.session.request(method, url, headers=headers, **kw)
