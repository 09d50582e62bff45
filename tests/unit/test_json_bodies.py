"""eldric.web.json_bodies: the one JSON body parser's bounds, without a server."""

from __future__ import annotations

import time

import pytest

from eldric.core.request_errors import BadRequestError
from eldric.web.json_bodies import MAX_JSON_BYTES, MAX_JSON_DEPTH, is_nested_deeper, parse_json_body


@pytest.mark.parametrize(("text", "deeper"), [
    (b"{}", False),
    (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, False),
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), True),
    (b"[[]," * 1000 + b"[]" + b"]" * 1000, True),  # siblings do not add up, their parents do
    (b"[" + b"[]," * 10_000 + b"[]]", False),
    (b'{"a": "' + b"[{" * 1000 + b'"}', False),  # brackets in a string are text
    (b'{"a": "\\"[[[[", "b": ' + b"[" * 100 + b"]" * 100 + b"}", True),  # an escaped quote does not end it
    (b'"unterminated [[[[' + b"[" * 100, False),  # an unterminated string runs to the end (the parser refuses it)
])
def test_nesting_is_the_depth_of_brackets_outside_strings(text: bytes, deeper: bool) -> None:
    assert is_nested_deeper(text, MAX_JSON_DEPTH) is deeper


@pytest.mark.parametrize("text", [b'"' + b'\\"' * (MAX_JSON_BYTES // 2), b"[" * MAX_JSON_BYTES,
                                  b'"\\"\\"' * (MAX_JSON_BYTES // 5)])
def test_the_scan_of_a_hostile_megabyte_takes_linear_time(text: bytes) -> None:
    started = time.perf_counter()
    is_nested_deeper(text, MAX_JSON_DEPTH)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(("body", "problem"), [
    (b"[" * 50_000 + b"]" * 50_000, f"nested deeper than {MAX_JSON_DEPTH} levels"),
    (b'{"model": "\xff"}', "not UTF-8"),
    (b'{"model": ', "Expecting value"),
    (b'{"model": "\\ud800"}', "lone UTF-16 surrogate"),
])
def test_refusals_are_400_naming_the_problem(body: bytes, problem: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_json_body(body)
    assert caught.value.status == 400 and caught.value.field == "json" and problem in str(caught.value)


def test_a_pair_of_surrogates_is_text() -> None:
    assert parse_json_body(b'{"model": "\\ud83d\\ude00"}') == {"model": "\U0001f600"}
