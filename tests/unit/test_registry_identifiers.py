"""File paths, model names and versions: what the registry accepts and what it refuses (400)."""

from __future__ import annotations

import pytest

from eldric.core.identifiers import validate_file_path, validate_model_name, validate_version
from eldric.core.request_errors import BadRequestError, InvalidPathError


@pytest.mark.parametrize("path", ["model.gguf", "tokenizer/tokenizer.json", ".gitattributes", "a b.txt",
                                  "onnx/model-00001-of-00002.safetensors", "x" * 255])
def test_safe_relative_paths_are_accepted(path: str) -> None:
    assert validate_file_path(path) == path


@pytest.mark.parametrize("path, why", [
    ("", "empty"),
    ("../etc/passwd", "'..'"),
    ("a/../../b", "'..'"),
    ("..", "'..'"),
    ("./model.gguf", "'.'"),
    ("/etc/passwd", "absolute"),
    ("a\\b.gguf", "backslash"),
    ("..\\..\\win.ini", "backslash"),
    ("a\x00.gguf", "NUL"),
    ("a//b", "empty"),
    ("dir/", "empty"),
    ("C:/x.gguf", "':'"),
    ("a\nb", "control"),
    ("x" * 256, "longer than 255"),
    ("/".join(["d"] * 17), "deeper"),
    ("y" * 513, "longer than 512"),
])
def test_unsafe_paths_are_refused_with_the_reason(path: str, why: str) -> None:
    with pytest.raises(InvalidPathError, match=why) as err:
        validate_file_path(path)
    assert err.value.status == 400 and err.value.field == "path"


def test_a_non_string_path_is_refused() -> None:
    with pytest.raises(InvalidPathError):
        validate_file_path(None)


@pytest.mark.parametrize("name", ["llama", "acme/llama-3.1-8b", "Qwen2.5_0.5B", "a" * 80])
def test_model_names(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b/c", ".hidden", "a\\b", "/abs", "a:b", "a" * 81, "a\x00"])
def test_bad_model_names(name: str) -> None:
    with pytest.raises(BadRequestError) as err:
        validate_model_name(name)
    assert err.value.status == 400 and err.value.field == "name"


@pytest.mark.parametrize("version, ok", [("v1", True), ("2024-06-01", True), ("q4_k_m", True),
                                         ("", False), ("..", False), ("a/b", False), ("-x", False)])
def test_versions(version: str, ok: bool) -> None:
    if ok:
        assert validate_version(version) == version
    else:
        with pytest.raises(BadRequestError):
            validate_version(version)
