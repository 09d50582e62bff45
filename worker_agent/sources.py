"""Blob sources: where a model's manifest and blobs come from.

Every source offers the same two calls to the download engine — `fetch_manifest`
and `open_range` — so a new source (data-node registry, peer worker, URL) plugs in
without touching the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import requests

from eldric.cluster.jobs.start import CLUSTER_REGISTRY
from eldric.core.digests import Digest
from eldric.core.errors import InvalidManifestError
from eldric.core.manifests import Manifest
from eldric.core.names import ModelName
from eldric.core.redaction import redact_url
from eldric.transfer.errors import ModelNotFoundError, SourceError, SourceUnavailableError
from eldric.transfer.http import error_text, http_session
from eldric.transfer.oci_client import OciClient, OciClientError
from eldric.transfer.registry_upstream import RegistryUpstream, raise_for_answer, registry_hints
from eldric.transfer.retry import NO_HINTS, Hints
from eldric.transfer.upstreams import PUBLIC_ONLY, AddressPolicy

if TYPE_CHECKING:
    from worker_agent.settings import AgentSettings


class BlobSource(Protocol):
    def fetch_manifest(self, name: ModelName) -> tuple[bytes, Manifest]: ...

    def open_range(self, name: ModelName, digest: Digest, start: int, end: int,
                   read_timeout: float) -> requests.Response: ...

    def describe(self) -> str: ...


class RegistrySource:
    """Docker Registry v2 / OCI distribution, as the Ollama registry (and docker-registry) serve it:
    the download engine's BlobSource over the one OCI client (eldric/transfer/oci_client.py).

    Its connections may reach the registry itself and public addresses (a CDN the registry
    redirects to, a token realm); anything else only when `policy` allows it.
    """

    def __init__(self, base_url: str, session: requests.Session | None = None,
                 policy: AddressPolicy = PUBLIC_ONLY, hints: Hints = NO_HINTS, *,
                 client: OciClient | None = None) -> None:
        self.client = client or OciClient.upstream(base_url, policy, session, hints=hints)
        self.base_url, self.hints = self.client.base, self.client.hints
        self.session = self.client.session  # the one its bytes come through (a rate cap paces it)

    @classmethod
    def from_settings(cls, name: ModelName, s: AgentSettings) -> RegistrySource:
        """The source of `name` under the agent's mirror, insecure hosts and both allow-lists (the controller
        checks a pull's name through the same RegistryUpstream, eldric/transfer/registry_upstream.py)."""
        upstream = RegistryUpstream(s.ollama_registry, s.insecure_registries, s.allowed_registries,
                                    AddressPolicy.parse(s.url_allowlist))
        base = upstream.base_url(name)
        return cls(base, policy=upstream.policy, hints=registry_hints(name, base))

    @classmethod
    def cluster(cls, s: AgentSettings, session: requests.Session | None = None) -> RegistrySource:
        """The cluster's registry (the data node's /v2/ at ELDRIC_REGISTRY_URL, behind the cluster secret): where
        models created or pushed through the controller live. Inside the cluster, so no proxy and no address policy."""
        if not s.registry_url:
            raise SourceError("this model is in the cluster's registry, but this agent has no ELDRIC_REGISTRY_URL: "
                              "set it to the data node's URL, as on the controller (e.g. http://data-1:8892)")
        where = redact_url(s.registry_url).partition("://")[2]
        hints = Hints(name_not_found="check ELDRIC_REGISTRY_URL",
                      tls_to_plain_http=f"set ELDRIC_REGISTRY_URL to http://{where}",
                      plain_http_to_tls=f"set ELDRIC_REGISTRY_URL to https://{where}")
        client = OciClient(s.registry_url, session or http_session(), token=s.cluster_secret, hints=hints)
        return cls(s.registry_url, client=client)

    @classmethod
    def for_job(cls, name: ModelName, s: AgentSettings, job_source: str | None,
                session: requests.Session | None = None) -> RegistrySource:
        """A pull job's source: the cluster's registry for a job of source `cluster` (eldric/cluster/jobs/start.py),
        else the registry the name says (the mirror for registry.ollama.ai names)."""
        return cls.cluster(s, session) if job_source == CLUSTER_REGISTRY else cls.from_settings(name, s)

    def describe(self) -> str:
        """The registry as job records show it: a mirror's credentials never appear."""
        return redact_url(self.base_url)

    def fetch_manifest(self, name: ModelName) -> tuple[bytes, Manifest]:
        with _as_source_errors():
            resp = self.client.manifest(name.repository, name.tag)  # MANIFEST_TIMEOUT
            if resp.status_code == 404:
                raise ModelNotFoundError(f"model '{name.short}' not found at {self.describe()}: {error_text(resp)}")
            raise_for_answer(self.client, resp, f"manifest of {name.short}")
            raw, _ = self.client.read_manifest(resp, f"the manifest of {name.short}")
        try:
            return raw, Manifest.parse(raw)
        except InvalidManifestError as exc:
            raise SourceError(f"unusable manifest for {name.short}: {exc}") from None

    def open_range(self, name: ModelName, digest: Digest, start: int, end: int,
                   read_timeout: float) -> requests.Response:
        with _as_source_errors():
            resp = self.client.blob(name.repository, digest, start=start, end=end, timeout=read_timeout)
        if resp.status_code == 404:
            resp.close()
            raise SourceError(f"blob {digest} not found at {self.describe()}")
        raise_for_answer(self.client, resp, f"blob {digest}")
        return resp


@contextmanager
def _as_source_errors() -> Iterator[None]:
    """The OCI client's failures in the download engine's words: SourceUnavailableError is retried."""
    try:
        yield
    except OciClientError as exc:
        raise (SourceUnavailableError if exc.transient else SourceError)(str(exc)) from None
