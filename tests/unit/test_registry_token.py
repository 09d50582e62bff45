"""Docker's anonymous token flow (eldric/transfer/registry_token.py), as both of its users meet it:
the agents' registry source and the data node's pull-through upstream."""

from __future__ import annotations

import json
import re

import pytest
import requests

from eldric.transfer.errors import SourceError, SourceUnavailableError
from eldric.transfer.registry_token import anonymous_token, bearer_challenge
from eldric.transfer.upstreams import PUBLIC_ONLY
from eldric.transfer.oci_client import OciClientError as UpstreamError
from registry.oci.upstream import Upstream
from tests.unit.test_transfer_http import GeneratedBody, response

CHALLENGE = 'Bearer realm="https://auth.test/token",service="registry.test",scope="repository:library/m:pull"'
MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()


class Session:
    """Answers by URL, in order; records (method, url, headers, params)."""

    def __init__(self, answers: dict[str, list]) -> None:
        self.answers, self.calls = {u: iter(a) for u, a in answers.items()}, []

    def request(self, method, url, headers=None, params=None, **kw) -> requests.Response:
        self.calls.append((method, url, dict(headers or {}), params))
        answer = next(self.answers[url])
        if isinstance(answer, BaseException):
            raise answer
        return answer()

    def get(self, url, **kw) -> requests.Response:
        return self.request("GET", url, **kw)


def test_a_bearer_challenge_is_found_whatever_its_case_and_only_on_a_401():
    assert bearer_challenge(response(b"", 401, {"WWW-Authenticate": CHALLENGE.lower()}))
    assert bearer_challenge(response(b"", 401, {"WWW-Authenticate": 'Basic realm="x"'})) is None
    assert bearer_challenge(response(b"", 403, {"WWW-Authenticate": CHALLENGE})) is None


def test_the_realm_gets_the_challenges_parameters_and_no_credential():
    session = Session({"https://auth.test/token": [lambda: response(b'{"access_token": "t0k"}')]})
    assert anonymous_token(session, CHALLENGE, "https://registry.test") == "t0k"
    [(_, url, headers, params)] = session.calls
    assert url == "https://auth.test/token"
    assert headers == {} and params == {"service": "registry.test", "scope": "repository:library/m:pull"}


@pytest.mark.parametrize("answer, error, words", [
    (lambda: response(b"", 503, reason="Service Unavailable"), SourceUnavailableError, "token: registry answered 503"),
    (lambda: response(b'{"errors": [{"code": "DENIED", "message": "no"}]}', 403), SourceError,
     "token: registry answered 403: DENIED no"),
    (lambda: response(b'["a token?"]'), SourceError, "answered something that is not a token"),
    (lambda: response(b'{"token": 7}'), SourceError, "answered something that is not a token"),
    (lambda: response(GeneratedBody(b'{"token": "', 100 << 20, b'"}')), SourceError,
     "the token answer is larger than 64 KiB"),
    (lambda: response(b"{}", 200, {"Content-Length": str(1 << 30)}), SourceError,
     "larger than 64 KiB (1073741824 bytes announced)"),
    (requests.ConnectionError("connection refused"), SourceUnavailableError, "token realm of https://registry.test"),
])
def test_a_realm_that_fails_is_one_sentence_retried_only_when_transient(answer, error, words):
    session = Session({"https://auth.test/token": [answer]})
    with pytest.raises(error) as info:
        anonymous_token(session, CHALLENGE, "https://registry.test")
    assert type(info.value) is error and words in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("challenge, words", [
    ('Bearer service="x"', "asks for credentials"),
    ('Bearer realm="file:///etc/passwd"', "unusable token realm"),
])
def test_a_challenge_without_a_usable_realm_asks_nothing(challenge, words):
    session = Session({})
    with pytest.raises(SourceError, match=words):
        anonymous_token(session, challenge, "https://registry.test")
    assert session.calls == []


def test_the_pull_through_upstream_keeps_a_token_per_repository_and_sends_it():
    url = "https://registry.test/v2/library/m/manifests/latest"
    session = Session({
        url: [lambda: response(b"", 401, {"WWW-Authenticate": CHALLENGE}),
              lambda: response(MANIFEST, 200, {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}),
              lambda: response(MANIFEST, 200, {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})],
        "https://auth.test/token": [lambda: response(b'{"token": "t0k"}')],
    })
    upstream = Upstream("https://registry.test", PUBLIC_ONLY, session=session)
    assert upstream.fetch_manifest("library/m", "latest")[0] == MANIFEST
    assert upstream.fetch_manifest("library/m", "latest")[0] == MANIFEST  # the token kept: no second 401
    sent = [(u, h.get("Authorization")) for _, u, h, _ in session.calls]
    assert sent == [(url, None), ("https://auth.test/token", None), (url, "Bearer t0k"), (url, "Bearer t0k")]


def test_the_pull_through_upstream_reports_a_failing_realm_as_its_own_error():
    url = "https://registry.test/v2/library/m/manifests/latest"
    session = Session({url: [lambda: response(b"", 401, {"WWW-Authenticate": CHALLENGE})],
                       "https://auth.test/token": [lambda: response(b"nope")]})
    with pytest.raises(UpstreamError, match=re.escape("token realm of https://registry.test answered something that is not a token")):
        Upstream("https://registry.test", PUBLIC_ONLY, session=session).fetch_manifest("library/m", "latest")
