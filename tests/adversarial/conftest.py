"""Attacks and races on a live cluster (issue 21): the fixtures of tests/integration, reused as they are."""

from tests.integration.conftest import cluster, oci, redis_server, tiny_model, workdir  # noqa: F401
