"""The OpenAPI documents' patterns say exactly what the services accept (clients and the fuzzer rely on them),
and file paths that cannot share one directory tree are found."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eldric.cluster.registry_api import find_path_conflict, path_conflict
from eldric.core.errors import EldricError
from eldric.core.identifiers import (FILE_PATH_PATTERN, NAME_PATTERN, VERSION_PATTERN, validate_file_path,
                                     validate_model_name, validate_version)
from eldric.core.names import OLLAMA_NAME_PATTERN, ModelName

CASES = [
    (NAME_PATTERN, validate_model_name, "aZ09_.-/:\\ \x00\né"),
    (VERSION_PATTERN, validate_version, "aZ09_.-/: \n"),
    (FILE_PATH_PATTERN, validate_file_path, "aZ9_.-/:\\ \x00\x1f\x7fé#?%"),
    (OLLAMA_NAME_PATTERN, ModelName.parse, "aZ09_.-/:@\\ \x00é"),
]


def accepts(validate, value: str) -> bool:
    try:
        validate(value)
    except EldricError:
        return False
    return True


@pytest.mark.parametrize("pattern, validate, _alphabet", CASES, ids=["name", "version", "path", "ollama"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_what_the_pattern_allows_is_accepted(pattern: str, validate, _alphabet: str, data) -> None:
    value = data.draw(st.from_regex(pattern, fullmatch=True))
    assert accepts(validate, value), value


@pytest.mark.parametrize("pattern, validate, alphabet", CASES, ids=["name", "version", "path", "ollama"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_what_is_accepted_matches_the_pattern(pattern: str, validate, alphabet: str, data) -> None:
    value = data.draw(st.text(alphabet=alphabet, min_size=1, max_size=24))
    if accepts(validate, value) and value == value.strip():  # ModelName.parse forgives surrounding blanks
        assert re.fullmatch(pattern, value), value


@pytest.mark.parametrize("case, value, allowed", [
    (0, "a" * 80, True), (0, "n" * 80 + "/" + "m" * 80, True), (0, "a" * 81, False), (0, "n" * 81 + "/m", False),
    (1, "v" * 80, True), (1, "v" * 81, False),
    (2, "/".join(["s"] * 16), True), (2, "/".join(["s"] * 17), False), (2, "x" * 255, True), (2, "x" * 256, False),
    (3, "h" * 350 + "/n/m:t", True), (3, "h" * 351 + "/n/m:t", False),
])
def test_limits_at_the_edge_agree(case: int, value: str, allowed: bool) -> None:
    pattern, validate, _ = CASES[case]
    assert bool(re.fullmatch(pattern, value)) is allowed and accepts(validate, value) is allowed


@pytest.mark.parametrize("path, others, expected", [
    ("ok.txt/inner", ["ok.txt"], "ok.txt"),
    ("ok.txt", ["ok.txt/inner"], "ok.txt/inner"),
    ("a/b/c", ["a"], "a"),
    ("ok.txt", ["ok.txt"], None),  # the same path replaces the file
    ("ok.txt2", ["ok.txt"], None),
    ("ok.txt", ["ok.txt-x/y", "ok.txtz"], None),
])
def test_path_conflict(path: str, others: list[str], expected: str | None) -> None:
    assert path_conflict(path, others) == expected


def test_find_path_conflict() -> None:
    assert find_path_conflict(["a.txt", "d/e.txt", "d/f.txt", "ok.txt", "ok.txt/inner"]) == ("ok.txt", "ok.txt/inner")
    assert find_path_conflict(["a", "a-b/c", "a.b", "b/a"]) is None
