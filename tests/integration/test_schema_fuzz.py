"""Schema fuzzing: schemathesis over the registry's and the controller's OpenAPI documents, live processes.

A real redis-server, `eldric registry` (under gunicorn, as in production) and `eldric controller`,
no worker agents. Each operation gets examples, boundary ("coverage") and random ("fuzzing") cases,
valid and invalid, and a stateful run chains operations through the links schemathesis infers (a
draft's id into its uploads, commit, files...). A case fails the test on:

- any 5xx (507 "storage full" excepted: a documented answer that depends on the disk, not a bug);
- a status, content type or body that its OpenAPI document does not describe;
- an `Allow` header (OPTIONS, 405) that lists other methods than the route has;
- a schema-valid request refused (400/422) or a schema-violating one accepted (2xx): the documents
  must say what the services really accept;
- any 401: every request carries `Authorization: bearer <token>`, the scheme in lower case, which all
  services must accept (RFC 9110 §11.1).

Bounded (max examples, steps) so both documents take well under a minute on two cores. Seeded:
set ELDRIC_FUZZ_SEED to replay the per-operation cases or explore with another seed (the stateful
runs are derandomized).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_lib
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.config import SchemathesisConfig

from testbed.processes import session, start_registry_and_controller

pytestmark = pytest.mark.integration
TOKEN, SECRET = "fuzz-api-token", "fuzz-cluster-secret"
SEED = int(os.environ.get("ELDRIC_FUZZ_SEED", "20261130"))
MAX_EXAMPLES = 30

# Operations that would reach outside loopback. A URL import makes the registry download whatever
# URL the fuzzer writes (on both services: the controller hands imports to the registry). Pulls,
# distributions, deletes and pins stay in: with no worker agent registered they are refused (409/404)
# before any task is queued, and nothing consumes the queues anyway.
EXCLUDED_PATHS = r"/api/v1/model-registry/imports$"

# Operations whose acceptance depends on more than the request's shape, so a schema cannot promise
# that every schema-valid request succeeds; every other check still runs on them:
# - the bytes of an upload are checked against the file name (a `.gguf` must be GGUF) and `digest`;
# - commit and finishing an upload depend on the draft's state (files present, bytes all received);
# - an Ollama name that names a registry host (`host/ns/model`) is accepted only when the allow-list
#   (ELDRIC_ALLOWED_REGISTRIES, the mirror, hf.co, registry.ollama.ai) names that host: a setting of
#   the running cluster, not of the schema (400 naming `model` otherwise).
CONTENT_CHECKED = [
    "POST /api/v1/model-registry/upload",
    "PUT /api/v1/model-registry/{model_id}/files/{file_path}",
    "PATCH /api/v1/model-registry/uploads/{upload_id}",
    "PUT /api/v1/model-registry/uploads/{upload_id}",
    "POST /api/v1/model-registry/{model_id}/commit",
    "POST /api/v1/models/pull",
    "POST /api/v1/models/distribute",
    "POST /api/v1/pins",
]


def fuzz_config(base_url: str, authorization: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "seed": SEED,
        "base-url": base_url,
        "headers": {"Authorization": authorization},
        "request-timeout": 30,
        "max-stream-events": 5,  # /pull-jobs/{id}/events is a stream
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        "phases": {"stateful": {"max-steps": 8}},
        "checks": {
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "507"]},
            # 413: the file and model size limits are settings of the running registry, not of its schema.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", "404", "409", "413", "507"]},
            # schemathesis's list plus 413 and 414: a body or request line over its bound is refused as such.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413",
                                                              "414", "415", "422", "428", "429", "5xx"]},
        },
        "operations": [{"include-name": name, "checks": {"positive_data_acceptance": {"enabled": False}}}
                       for name in CONTENT_CHECKED],
    })


@schemathesis.check
def lower_case_bearer_accepted(ctx, response, case) -> None:
    """The token went with `bearer` in lower case: a 401 means a service still wants `Bearer`."""
    if response.status_code == 401:
        raise AssertionError(f"401 although `Authorization: bearer <token>` was sent: {response.text[:200]}")


class Live:
    def __init__(self, registry: str, controller: str) -> None:
        self.registry, self.controller = registry, controller


@pytest.fixture(scope="module")
def live(workdir: Path, redis_server):
    env = {"ELDRIC_REDIS_URL": redis_server.url, "ELDRIC_CLUSTER_SECRET": SECRET, "ELDRIC_API_TOKEN": TOKEN}
    registry, controller, rport, cport = start_registry_and_controller(workdir, env, storage="fuzz-reg",
                                                                       prefix="fuzz-")
    try:
        yield Live(f"http://127.0.0.1:{rport}", f"http://127.0.0.1:{cport}")
    finally:
        controller.stop()
        registry.stop()


def load(url: str, base_url: str, authorization: str):
    return schemathesis.openapi.from_url(url, config=fuzz_config(base_url, authorization))


@pytest.fixture(scope="module")
def registry_schema(live: Live):
    return load(f"{live.registry}/openapi.json", live.registry, f"bearer {SECRET}")


@pytest.fixture(scope="module")
def controller_schema(live: Live):
    return load(f"{live.controller}/api/v1/openapi.json", live.controller, f"bearer {TOKEN}")


registry_api = schemathesis.pytest.from_fixture("registry_schema").exclude(path_regex=EXCLUDED_PATHS)
controller_api = schemathesis.pytest.from_fixture("controller_schema").exclude(path_regex=EXCLUDED_PATHS)


@registry_api.parametrize()
def test_registry_api_matches_its_document(case) -> None:
    case.call_and_validate()  # the checks above, with the bearer check registered by @schemathesis.check


@controller_api.parametrize()
def test_controller_api_matches_its_document(case) -> None:
    case.call_and_validate()


# Generation only, as schemathesis runs its own stateful phase: a live server does not replay a scenario
# exactly (ids differ), so shrinking would only report the replay as flaky.
STATEFUL = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck), stateful_step_count=8)


def run_workflows(schema, reset: Callable[[], None]) -> None:
    """Chained calls along the links schemathesis infers, each response checked as above.

    Every scenario starts from an empty service (`reset`), so the same steps meet the same answers:
    Hypothesis refuses a run whose choices lead to different rules than before ("flaky strategy").
    """
    class Workflows(schema.exclude(path_regex=EXCLUDED_PATHS).as_state_machine()):
        def setup(self) -> None:
            reset()

    Workflows.run(settings=STATEFUL)


def empty_registry(live: Live) -> None:
    http = session()
    headers = {"Authorization": f"Bearer {SECRET}"}
    for state in ("draft", "ready"):
        listing = http.get(f"{live.registry}/api/v1/model-registry", params={"state": state, "limit": 500},
                           headers=headers, timeout=30).json()
        for model in listing["models"]:
            http.delete(f"{live.registry}/api/v1/model-registry/{model['id']}", headers=headers, timeout=30)


def test_registry_workflows(live: Live, registry_schema) -> None:
    run_workflows(registry_schema, lambda: empty_registry(live))


def test_controller_workflows(live: Live, controller_schema, redis_server) -> None:
    client = redis_lib.Redis.from_url(redis_server.url)

    def reset() -> None:
        client.flushdb()  # pins and jobs
        empty_registry(live)
    run_workflows(controller_schema, reset)
