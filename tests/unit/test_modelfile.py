"""The Modelfile parser, the create request's checks and the image they build (pure: no sockets)."""

from __future__ import annotations

import json

import pytest

from controller.model_create import check_cluster_registry
from eldric.core.create_requests import QUANTIZE_REFUSED, check_template, parse_create, parse_parameters
from eldric.core.digests import Digest
from eldric.core.manifests import (OLLAMA_LICENSE, OLLAMA_MESSAGES, OLLAMA_MODEL, OLLAMA_PARAMS, OLLAMA_SYSTEM,
                                   OLLAMA_TEMPLATE, Layer)
from eldric.core.model_build import Base, build_model
from eldric.core.modelfile import ModelfileError, parse_modelfile
from eldric.core.request_errors import BadRequestError, ConflictError

BLOB = "sha256:" + "ab" * 32


def test_every_command_of_a_modelfile() -> None:
    text = ('\ufeff# a comment\nFROM tiny\nparameter temperature 0.2\nPARAMETER stop "<|im_end|>"\n'
            'PARAMETER stop </s>\nSYSTEM """You are\na pirate."""\nTEMPLATE "{{ .Prompt }}"\n\n'
            'MESSAGE user hello there\nMESSAGE assistant """ahoy\nmatey"""\nLICENSE MIT\nlicense """two\nlines"""\n')
    assert parse_modelfile(text) == {
        "from": "tiny", "system": "You are\na pirate.", "template": "{{ .Prompt }}",
        "messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "ahoy\nmatey"}],
        "license": ["MIT", "two\nlines"], "parameters": {"temperature": "0.2", "stop": ["<|im_end|>", "</s>"]}}


@pytest.mark.parametrize("line", [f"FROM {BLOB}", f"FROM @{BLOB}", f"FROM sha256-{'AB' * 32}"])
def test_from_a_blob_names_the_uploaded_file(line: str) -> None:
    assert parse_modelfile(line) == {"files": {"model.gguf": BLOB}}


def test_crlf_line_ends_and_adapters() -> None:
    assert parse_modelfile(f"FROM tiny\r\nADAPTER {BLOB}\r\n") == {"from": "tiny", "adapters": {"adapter.gguf": BLOB}}


@pytest.mark.parametrize("text, words", [
    ("PARAMETER temperature 1", "no FROM line"),
    ("FROM tiny\nFOO bar", "(line 2): command must be one of"),
    ("FROM tiny\nMESSAGE bot hi", "(line 2): message role must be one of"),
    ('FROM tiny\nSYSTEM """never closed', "(line 2): unterminated \"\"\" string"),
    ('FROM tiny\nSYSTEM "a" b', "text after a closing"),
    ("FROM ./model.gguf", "upload it with POST /api/blobs"),
    ("FROM tiny\nPARAMETER temperature", "PARAMETER needs a name and a value"),
    ("FROM tiny\nADAPTER ./lora.gguf", "ADAPTER must name an uploaded blob"),
    ("FROM tiny\nREQUIRES 0.5.0", "not supported"),
    ("FROM", "command must be one of"),
])
def test_bad_modelfiles_name_their_line(text: str, words: str) -> None:
    with pytest.raises(ModelfileError) as err:
        parse_modelfile(text)
    assert words in str(err.value)


def test_the_modelfile_form_and_the_json_form_give_one_spec() -> None:
    legacy = parse_create({"model": "m", "modelfile": "FROM tiny\nPARAMETER num_ctx 256\nPARAMETER stop a\nSYSTEM hi"})
    modern = parse_create({"model": "m", "from": "tiny", "parameters": {"num_ctx": 256, "stop": ["a"]},
                           "system": "hi"})
    assert legacy == modern and legacy.stream is True and legacy.name.short == "m:latest"
    assert parse_create({"name": "m", "from": "tiny", "stream": False, "renderer": "x"}).stream is False


@pytest.mark.parametrize("body, field, words", [
    ({"model": "m", "from": "tiny", "quantize": "q4_K_M"}, "quantize", QUANTIZE_REFUSED),
    ({"model": "m"}, "from", "neither 'from' or 'files'"),
    ({"from": "tiny"}, "model", "model is required"),
    ({"model": "Big", "from": "tiny"}, "model", "lowercase"),
    ({"model": "other.example:5000/ns/m", "from": "tiny"}, "model", "without a host"),
    ({"model": "../x", "from": "tiny"}, "model", "invalid model name"),
    ({"model": "m", "files": {"m.gguf": "sha256:zzz"}}, "files", "invalid digest"),
    ({"model": "m", "files": {"../m.gguf": BLOB}}, "files", "relative"),
    ({"model": "m", "files": {"/m.gguf": BLOB}}, "files", "relative"),
    ({"model": "m", "from": "tiny", "adapters": {"a": BLOB, "b": BLOB}}, "adapters", "only one adapter"),
    ({"model": "m", "from": "tiny", "parameters": {"temprature": 1}}, "parameters", "unknown parameter 'temprature'"),
    ({"model": "m", "from": "tiny", "parameters": {"num_ctx": "big"}}, "parameters", "not an integer"),
    ({"model": "m", "from": "tiny", "parameters": {"top_p": True}}, "parameters", "not a number"),
    ({"model": "m", "from": "tiny", "parameters": {"stop": [1]}}, "parameters", "list of strings"),
    ({"model": "m", "from": "tiny", "template": "{{ if .System }}x"}, "template", "template error"),
    ({"model": "m", "from": "tiny", "messages": [{"role": "bot", "content": "x"}]}, "messages", "role"),
    ({"model": "m", "from": "tiny", "license": 3}, "license", "string or a list"),
    ({"model": "m", "from": "tiny", "stream": "yes"}, "stream", "true or false"),
    ({"model": "m", "modelfile": "FROM tiny\nBAD x"}, "modelfile", "modelfile: (line 2)"),
])
def test_bad_create_requests_name_the_field(body: dict, field: str, words: str) -> None:
    with pytest.raises(BadRequestError) as err:
        parse_create(body)
    assert err.value.field == field and words in str(err.value), str(err.value)


def test_parameters_are_typed_as_ollama_types_them() -> None:
    assert parse_parameters({"num_ctx": "256", "temperature": "0.5", "use_mmap": "false", "stop": "x",
                             "seed": 7.0, "mirostat": 2}) == {
        "num_ctx": 256, "temperature": 0.5, "use_mmap": False, "stop": ["x"], "seed": 7}


@pytest.mark.parametrize("template", ["{{ .Prompt }}", "{{- if .System }}{{ .System }}{{ else }}x{{ end -}}",
                                      "{{ range .Messages }}{{ if eq .Role \"user\" }}u{{ end }}{{ end }}",
                                      "{{/* note */}}plain"])
def test_well_formed_templates_pass(template: str) -> None:
    check_template(template)


@pytest.mark.parametrize("template", ["{{ .Prompt", "{{ end }}", "{{ else }}", "{{ range .Messages }}x", "{{}}"])
def test_broken_templates_fail(template: str) -> None:
    with pytest.raises(BadRequestError, match="template error"):
        check_template(template)


def _layer(media_type: str, data: bytes) -> Layer:
    return Layer(media_type, Digest.of_bytes(data), len(data))


def test_a_build_over_a_base_replaces_merges_and_appends_as_ollama_does() -> None:
    model, system, params = _layer(OLLAMA_MODEL, b"GGUF"), _layer(OLLAMA_SYSTEM, b"old"), _layer(OLLAMA_PARAMS, b"{}")
    base = Base(layers=(model, system, params), params={"stop": ["s"], "temperature": 1.0},
                config={"model_format": "gguf", "model_family": "llama", "file_type": "F32", "rootfs": {}})
    spec = parse_create({"model": "m", "from": "tiny", "system": "new", "license": ["A", "B"],
                         "parameters": {"temperature": 0.3}, "messages": [{"role": "user", "content": "hi"}]})
    built = build_model(spec, base)
    kinds = [layer.media_type for layer in built.layers]
    assert kinds == [OLLAMA_MODEL, OLLAMA_SYSTEM, OLLAMA_LICENSE, OLLAMA_LICENSE, OLLAMA_PARAMS, OLLAMA_MESSAGES]
    by_digest = {str(layer.digest): layer for layer in built.layers}
    assert built.blobs[str(built.layers[1].digest)] == b"new"
    assert json.loads(built.blobs[str(built.layers[4].digest)]) == {"stop": ["s"], "temperature": 0.3}
    config = json.loads(built.blobs[str(built.config.digest)])
    assert config["model_family"] == "llama" and config["rootfs"]["diff_ids"] == list(by_digest)
    manifest = built.manifest()
    assert manifest.config == built.config and str(model.digest) not in built.blobs  # the base's blob is reused


def test_a_build_from_an_uploaded_gguf_says_what_its_header_says() -> None:
    model = _layer(OLLAMA_MODEL, b"GGUF...")
    spec = parse_create({"model": "m", "files": {"m.gguf": str(model.digest)}, "system": ""})
    built = build_model(spec, Base(), files=[model], facts={"architecture": "llama", "parameter_count": 494_000_000,
                                                             "file_type": "Q4_K"})
    assert [layer.media_type for layer in built.layers] == [OLLAMA_MODEL]  # an empty SYSTEM adds no layer
    config = json.loads(built.blobs[str(built.config.digest)])
    assert (config["model_family"], config["model_type"], config["file_type"]) == ("llama", "494M", "Q4_K")


def test_template_layers_replace_the_bases() -> None:
    base = Base(layers=(_layer(OLLAMA_MODEL, b"G"), _layer(OLLAMA_TEMPLATE, b"old")))
    built = build_model(parse_create({"model": "m", "from": "b", "template": "{{ .Prompt }}!"}), base)
    assert [built.blobs.get(str(x.digest)) for x in built.layers] == [None, b"{{ .Prompt }}!"]


def test_create_needs_only_the_controllers_cluster_registry() -> None:
    """Whatever ELDRIC_OLLAMA_REGISTRY says: the created model's pull job fetches from the data node."""
    check_cluster_registry("http://data:8892")
    with pytest.raises(ConflictError, match="set ELDRIC_REGISTRY_URL"):
        check_cluster_registry("")
