"""eldric.core.names: Ollama's name grammar, its defaults, and the path tricks it must refuse."""

from __future__ import annotations

import pytest

from eldric.core.errors import InvalidNameError
from eldric.core.names import DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG, MAX_NAME_LENGTH, ModelName


@pytest.mark.parametrize(
    "raw, host, namespace, model, tag",
    [
        ("tiny", DEFAULT_HOST, DEFAULT_NAMESPACE, "tiny", DEFAULT_TAG),
        ("qwen2.5:0.5b", DEFAULT_HOST, DEFAULT_NAMESPACE, "qwen2.5", "0.5b"),
        ("user/model:tag", DEFAULT_HOST, "user", "model", "tag"),
        ("user/model", DEFAULT_HOST, "user", "model", DEFAULT_TAG),
        ("host:5000/ns/model:tag", "host:5000", "ns", "model", "tag"),
        ("host:5000/ns/model", "host:5000", "ns", "model", DEFAULT_TAG),
        ("registry.example.com/ns/model:v1.2-q4_K_M", "registry.example.com", "ns", "model", "v1.2-q4_K_M"),
        ("registry.ollama.ai/library/llama3:8b", DEFAULT_HOST, DEFAULT_NAMESPACE, "llama3", "8b"),
        ("  padded:tag  ", DEFAULT_HOST, DEFAULT_NAMESPACE, "padded", "tag"),
        ("_under/_score:_x", DEFAULT_HOST, "_under", "_score", "_x"),
    ],
)
def test_parse_splits_name_and_applies_ollama_defaults(raw, host, namespace, model, tag):
    name = ModelName.parse(raw)
    assert (name.host, name.namespace, name.model, name.tag) == (host, namespace, model, tag)


def test_port_colon_is_not_taken_for_a_tag():
    name = ModelName.parse("localhost:5000/ns/model")
    assert name.host == "localhost:5000"
    assert name.tag == "latest"
    assert name.model == "model"


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../x", "namespace"),
        ("../../etc/passwd", "too many"),
        ("/etc/passwd", "host"),
        ("ns/../model", "namespace"),
        ("a/b/../model", "too many"),
        ("host/../model", "namespace"),
        ("a\\b", "backslash"),
        ("model\x00", "NUL"),
        (".hidden", "model"),
        ("ns/.hidden", "model"),
        ("model:.tag", "tag"),
        ("ns.with.dot/model", "namespace"),
        ("a/b/c/d", "too many"),
        ("a/b/c/d:tag", "too many"),
        ("model@sha256:" + "a" * 64, "@digest"),
        ("model:tag@sha256:" + "a" * 64, "@digest"),
        ("model:", "empty tag"),
        (":tag", "empty model"),
        ("ns/", "empty model"),
        ("/model", "empty namespace"),
        ("host//model", "empty namespace"),
        ("model:tag:extra", "model"),
        ("mo del", "model"),
        ("model:ta/g", "namespace"),
        ("C:/windows", "namespace"),
        ("m" * 81, "model longer than 80"),
        ("n" * 81 + "/model", "namespace longer than 80"),
        ("model:" + "t" * 81, "tag longer than 80"),
        ("h" * 351 + "/ns/model", "host longer than 350"),
        ("x" * (MAX_NAME_LENGTH + 1), f"longer than {MAX_NAME_LENGTH}"),
    ],
)
def test_parse_rejects_bad_names_naming_the_problem(raw, fragment):
    with pytest.raises(InvalidNameError) as info:
        ModelName.parse(raw)
    assert fragment in str(info.value)


@pytest.mark.parametrize("raw", [None, 5, b"model"])
def test_parse_rejects_non_strings(raw):
    with pytest.raises(InvalidNameError):
        ModelName.parse(raw)


def test_invalid_name_error_is_a_value_error():
    with pytest.raises(ValueError):
        ModelName.parse("../x")


@pytest.mark.parametrize(
    "limit_name",
    ["m" * 80, "n" * 80 + "/model", "model:" + "t" * 80, "h" * 350 + "/ns/model"],
)
def test_parts_at_their_length_limit_are_accepted(limit_name):
    ModelName.parse(limit_name)


@pytest.mark.parametrize("raw", ["ns\n/model", "model\n:tag", "host\n/ns/model"])
def test_parse_rejects_a_newline_inside_a_part(raw):
    with pytest.raises(InvalidNameError):
        ModelName.parse(raw)


@pytest.mark.parametrize(
    "raw, short",
    [
        ("tiny", "tiny:latest"),
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("registry.ollama.ai/library/qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("user/model:tag", "user/model:tag"),
        ("host:5000/library/model", "host:5000/library/model:latest"),
        ("host:5000/ns/model:tag", "host:5000/ns/model:tag"),
    ],
)
def test_short_drops_only_default_host_and_namespace(raw, short):
    name = ModelName.parse(raw)
    assert name.short == short
    assert ModelName.parse(name.short) == name


def test_str_is_the_fully_qualified_name_and_round_trips():
    name = ModelName.parse("qwen2.5:0.5b")
    assert str(name) == "registry.ollama.ai/library/qwen2.5:0.5b"
    assert ModelName.parse(str(name)) == name


def test_str_keeps_a_registry_port():
    assert str(ModelName.parse("host:5000/ns/model")) == "host:5000/ns/model:latest"


@pytest.mark.parametrize(
    "raw, repository",
    [("tiny", "library/tiny"), ("user/model:tag", "user/model"), ("host:5000/ns/model:t", "ns/model")],
)
def test_repository_is_namespace_slash_model(raw, repository):
    assert ModelName.parse(raw).repository == repository


@pytest.mark.parametrize(
    "raw, parts",
    [
        ("qwen2.5:0.5b", ("registry.ollama.ai", "library", "qwen2.5", "0.5b")),
        ("host:5000/ns/model", ("host:5000", "ns", "model", "latest")),
    ],
)
def test_manifest_parts_are_host_namespace_model_tag(raw, parts):
    assert ModelName.parse(raw).manifest_parts() == parts


def test_is_default_host():
    assert ModelName.parse("tiny").is_default_host
    assert not ModelName.parse("example.com/ns/tiny").is_default_host


def test_names_are_hashable_values():
    assert {ModelName.parse("tiny"), ModelName.parse("library/tiny:latest")} == {ModelName.parse("tiny")}
