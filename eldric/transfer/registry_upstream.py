"""Where an Ollama name is pulled from, and whether it is there: one rule for the agents and the controller.

`RegistryUpstream` holds the settings both read alike (ELDRIC_OLLAMA_REGISTRY, ELDRIC_INSECURE_REGISTRIES,
ELDRIC_ALLOWED_REGISTRIES, ELDRIC_URL_ALLOWLIST): a registry.ollama.ai name is fetched from the mirror, any
other from its own host (http for an insecure one), over the guarded upstream session, with the hints
that mend a failed connection. The agents' registry source (worker_agent/sources.py) downloads through
it; the controller asks it once before a pull fans out (`check_model`, issue 22: a typo became a job
failed on every worker with the same MANIFEST_UNKNOWN and no word of the tags that exist).

`check_model` is one manifest GET with short timeouts (LOOKUP_CONNECT_TIMEOUT, LOOKUP_TIMEOUT). Only
when that answers 404 does it ask more, to say what is there instead: the lowercase name (registries
know only lowercase repositories, and docker-registry answers a capital with `404 page not found`) and
the repository's tags, when the registry lists them. Those questions are only hints: together they get
HINT_SECONDS, and a registry that stops answering them costs the 404 its hint, not the caller more time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import requests

from eldric.core.names import ModelName
from eldric.core.redaction import host_of, redact_url
from eldric.transfer.errors import ModelNotFoundError, SourceError, SourceUnavailableError, TransferError
from eldric.transfer.http import CONNECT_TIMEOUT, error_text, raise_for_registry_status
from eldric.transfer.oci_client import OciClient
from eldric.transfer.retry import Hints, is_plain_http_refusal
from eldric.transfer.upstreams import PUBLIC_ONLY, AddressPolicy, RegistryAllowList

CA_HINT = "give its CA certificate in REQUESTS_CA_BUNDLE"
# A request waits for the check: connecting may take this long, each read LOOKUP_TIMEOUT. The read stays above
# the data node's default --upstream-timeout (5 s), so with a hanging upstream it still hears the cached manifest.
LOOKUP_CONNECT_TIMEOUT = 5.0
LOOKUP_TIMEOUT = 8.0
HINT_SECONDS = 3.0  # all the questions after a 404 together (the lowercase name, the tag lists)
MAX_TAGS_SHOWN = 20


def registry_base_url(name: ModelName, mirror: str, insecure_hosts: tuple[str, ...] = (),
                      allowed: tuple[str, ...] = ()) -> str:
    """The URL serving `name`: the configured mirror for registry.ollama.ai, else the name's host.

    HostNotAllowedError, before any connection, for a host outside the allow-list
    (eldric.transfer.upstreams: the defaults, the mirror, `insecure_hosts` and `allowed`).
    """
    RegistryAllowList.build(allowed, mirror=mirror, insecure=insecure_hosts).check(name)
    if name.is_default_host:
        return mirror.rstrip("/")
    scheme = "http" if name.host in insecure_hosts else "https"
    return f"{scheme}://{name.host}"


def registry_hints(name: ModelName, base_url: str) -> Hints:
    """The settings that mend a failed connection to `base_url`, the registry serving `name`.

    A mirror's credentials show as `***@` (the same ones stay in the setting)."""
    where = redact_url(base_url).partition("://")[2]
    if name.is_default_host:
        return Hints(name_not_found="set ELDRIC_OLLAMA_REGISTRY to a reachable mirror",
                     tls_to_plain_http=f"set ELDRIC_OLLAMA_REGISTRY to http://{where}",
                     plain_http_to_tls=f"set ELDRIC_OLLAMA_REGISTRY to https://{where}", certificate=CA_HINT)
    return Hints(name_not_found=f"check the registry host in '{name.short}'",
                 tls_to_plain_http="add it to ELDRIC_INSECURE_REGISTRIES",
                 plain_http_to_tls="remove it from ELDRIC_INSECURE_REGISTRIES", certificate=CA_HINT)


def setting_of(name: ModelName) -> str:
    """The variable that says where `name` comes from ('' for a name of its own host)."""
    return "ELDRIC_OLLAMA_REGISTRY" if name.is_default_host else ""


@dataclass(frozen=True)
class RegistryUpstream:
    """The upstream settings of agents and controller: the mirror, insecure and allowed hosts, the address policy."""

    mirror: str
    insecure: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    policy: AddressPolicy = PUBLIC_ONLY

    def base_url(self, name: ModelName) -> str:
        """registry_base_url under these settings (HostNotAllowedError outside the allow-list)."""
        return registry_base_url(name, self.mirror, self.insecure, self.allowed)

    def client(self, name: ModelName, session: requests.Session | None = None, *,
               connect_timeout: float = CONNECT_TIMEOUT) -> OciClient:
        """The OCI client of the registry serving `name`, with the hints for its connection failures."""
        base = self.base_url(name)
        return OciClient.upstream(base, self.policy, session, hints=registry_hints(name, base),
                                  connect_timeout=connect_timeout)


def raise_for_answer(client: OciClient, resp: requests.Response, what: str) -> None:
    """A manifest or blob answer of `client`'s registry that is an error, as raise_for_registry_status says it,
    with the hint when a TLS server refused plain http (Go's and nginx's 400)."""
    if resp.status_code == 400:
        text = error_text(resp)
        if is_plain_http_refusal(400, text):
            raise SourceError(f"{host_of(client.base)} speaks https, not plain http; "
                              f"{client.hints.plain_http_to_tls}".rstrip("; "))
        raise SourceError(f"{what}: registry answered 400: {text}")
    raise_for_registry_status(resp, what)


def check_model(client: OciClient, name: ModelName, timeout: float = LOOKUP_TIMEOUT,
                hint_seconds: float = HINT_SECONDS) -> int | None:
    """Return the model's size when `name`'s manifest is at the registry (one GET of it): its config and
    layer sizes summed, what placement checks each worker's room against (None when the body does not say).

    ModelNotFoundError when it answers 404, saying what is there instead (asked within `hint_seconds`);
    any other TransferError (with the hints) when it cannot be asked or answers something else.
    """
    found_manifest, size = _has_manifest(client, name, timeout)
    if found_manifest:
        return size
    found = _what_is_there(client, name, _Budget(time.monotonic() + hint_seconds))
    raise ModelNotFoundError(f"model '{name.short}' not found at {redact_url(client.base)}"
                             + (f": {found}" if found else ""))


def _has_manifest(client: OciClient, name: ModelName, timeout: float) -> tuple[bool, int | None]:
    with client.manifest(name.repository, name.tag, timeout=timeout) as resp:
        if resp.status_code == 404:
            return False, None
        if resp.status_code >= 500:  # said in its own words: one answer to a person, not a retry's log line
            raise SourceUnavailableError(f"registry answered {resp.status_code}: {error_text(resp)}")
        raise_for_answer(client, resp, f"manifest of {name.short}")
        try:
            body, _ = client.read_manifest(resp, f"manifest of {name.short}")
        except TransferError:
            return True, None  # it is there; its size is only a placement hint
        return True, manifest_size(body)


def manifest_size(body: bytes) -> int | None:
    """The bytes a manifest's config and layers add up to, None when it lists no sizes (an index, a bad body)."""
    try:
        doc = json.loads(body)
        parts = [doc.get("config") or {}, *(doc.get("layers") or [])]
        sizes = [int(p["size"]) for p in parts if isinstance(p, dict) and "size" in p]
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
        return None
    return sum(sizes) if sizes else None


class _Budget:
    """What is left of the hint questions' time: each asks with the rest as its timeout, none after it ran out."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def ask(self, question: Callable[[float], object]):
        """What `question(timeout)` answers, None when no time is left or the registry could not answer."""
        left = self.deadline - time.monotonic()
        if left <= 0.05:
            return None
        try:
            return question(left)
        except TransferError:
            return None


def _what_is_there(client: OciClient, name: ModelName, budget: _Budget) -> str:
    """The lowercase name or tags that exist, in words ('' when the registry says nothing more in time)."""
    lower = replace(name, namespace=name.namespace.lower(), model=name.model.lower(), tag=name.tag.lower())
    lower_tags = None
    if lower != name:
        if budget.ask(lambda t: _has_manifest(client, lower, t)[0]):
            return f"model names are lowercase; did you mean '{lower.short}'?"
        lower_tags = budget.ask(lambda t: client.list_tags(lower.repository, timeout=t))
        if lower_tags:
            return f"model names are lowercase; the tags of {_repository(lower)} there are {_listed(lower_tags)}"
    tags = budget.ask(lambda t: client.list_tags(name.repository, timeout=t))
    if tags:
        return f"its tags there are {_listed(tags)}"
    if tags == [] or (tags is None and lower_tags == []):
        return f"it has no model {_repository(name)}"
    return ""


def _repository(name: ModelName) -> str:
    return name.short.rpartition(":")[0]


def _listed(tags: list[str]) -> str:
    shown = ", ".join(tags[:MAX_TAGS_SHOWN])
    return shown if len(tags) <= MAX_TAGS_SHOWN else f"{shown} and {len(tags) - MAX_TAGS_SHOWN} more"
