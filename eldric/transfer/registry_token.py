"""Docker's anonymous token flow, shared by the agents' registry source and the data node's pull-through cache.

A public repository of the Ollama registry (or of docker-registry with token auth) answers a
first request 401 with `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`; the client
asks the realm for a token with those parameters and sends it as `Authorization: Bearer` from
then on. No credential goes to the realm. The realm must be an http(s) URL, and the caller's
session (eldric.transfer.http.guard) decides whether its address may be reached: a registry
cannot send us to the metadata address by naming it as its realm. The answer is bounded.
"""

from __future__ import annotations

import json
import re

import requests

from eldric.core.errors import cap_text
from eldric.core.redaction import redact_url, redact_urls
from eldric.transfer.errors import SourceError
from eldric.transfer.http import CONNECT_TIMEOUT, raise_for_registry_status, read_small_body
from eldric.transfer.retry import NO_HINTS, TRANSIENT_ERRORS, Hints, connection_error
from eldric.transfer.upstreams import is_http_url

MAX_TOKEN_BYTES = 64 << 10
_PARAM = re.compile(r'(\w+)="([^"]*)"')


def bearer_challenge(resp: requests.Response) -> str | None:
    """The Bearer challenge of a 401 answer (the scheme is case-insensitive), or None."""
    challenge = resp.headers.get("WWW-Authenticate", "")
    return challenge if resp.status_code == 401 and challenge.lower().startswith("bearer") else None


def anonymous_token(session: requests.Session, challenge: str, registry: str, hints: Hints = NO_HINTS) -> str:
    """A token from the challenge's realm. SourceUnavailableError when the realm could not be reached
    or answered a transient status (worth a retry); SourceError for anything else, in one sentence."""
    params = dict(_PARAM.findall(challenge))
    realm = params.pop("realm", None)
    registry = redact_url(registry)
    if not realm:
        raise SourceError(f"registry {registry} asks for credentials")
    if not is_http_url(realm):
        raise SourceError(f"registry {registry} named an unusable token realm: {cap_text(redact_url(realm), 200)!r}")
    what = f"token realm of {registry}"
    try:
        resp = session.get(realm, params=params, stream=True, timeout=(CONNECT_TIMEOUT, 30))
    except TRANSIENT_ERRORS as exc:
        raise connection_error(exc, realm, hints, what=f"{what}:") from None
    except requests.RequestException as exc:  # too many redirects, a refused address: no retry mends it
        raise SourceError(f"{what}: {cap_text(redact_urls(str(exc)), 200)}") from None
    raise_for_registry_status(resp, "token")
    body = read_small_body(resp, MAX_TOKEN_BYTES, "the token answer")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    token = (doc.get("token") or doc.get("access_token") or "") if isinstance(doc, dict) else None
    if not isinstance(token, str):
        raise SourceError(f"{what} answered something that is not a token")
    return token
