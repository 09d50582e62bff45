"""The strings clients name things with: model names, versions and file paths inside a model.

Grammar::

    model name := [namespace "/"] name     e.g. "llama-3-8b" or "acme/llama-3-8b" (names.FileModelRef)
    version    := part                     e.g. "v3", "2024-06-01", "q4_k_m"
    part       := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,79}; a namespace holds no "."
    file path  := segment ("/" segment)*   at most 16 segments, 512 characters
    segment    := 1-255 characters, none of "/", "\\", ":", NUL or control
                  characters; not "." nor ".."

A valid file path is therefore always a safe relative path: `../`, absolute paths,
NUL and backslashes are rejected before anything touches disk.
"""

from __future__ import annotations

import re

from eldric.core.errors import InvalidNameError
from eldric.core.request_errors import BadRequestError, InvalidPathError
from eldric.core.names import FileModelRef, part_pattern

MAX_PATH_LENGTH = 512
MAX_PATH_DEPTH = 16
MAX_SEGMENT_LENGTH = 255

_FORBIDDEN_CHARS = r"\\:\x00-\x1f\x7f"  # what a segment may not hold besides "/" (a character class)
_FORBIDDEN = re.compile(f"[{_FORBIDDEN_CHARS}]")

# The grammar above as OpenAPI patterns (ECMA-262, which Python's re reads the same way), built from the
# pieces the validators below check with, so a client or a fuzzer knows what is accepted. The services
# still check with the validators (400 naming the field); tests/unit/test_api_patterns.py proves the two agree.
NAME_PATTERN = rf"^(?!.*\.\.)(?:{part_pattern('namespace')}/)?{part_pattern('model')}$"
VERSION_PATTERN = rf"^(?!.*\.\.){part_pattern('tag')}$"
# Segments as counted repetitions, not a `(?!.*[^/]{256})` lookahead: generating strings for that
# lookahead took the fuzzer minutes per operation.
_SEGMENT = rf"[^/{_FORBIDDEN_CHARS}]{{1,{MAX_SEGMENT_LENGTH}}}"
FILE_PATH_PATTERN = rf"^(?!(?:.*/)?\.\.?(?:/|$)){_SEGMENT}(?:/{_SEGMENT}){{0,{MAX_PATH_DEPTH - 1}}}$"


def validate_file_path(raw: object, field: str = "path") -> str:
    """Return `raw` if it is a safe relative file path; raise InvalidPathError naming the problem."""
    if not isinstance(raw, str) or raw == "":
        raise InvalidPathError("file path is empty", field)
    if "\x00" in raw:
        raise InvalidPathError("file path contains NUL", field)
    if "\\" in raw:
        raise InvalidPathError(f"file path {raw!r} contains a backslash; use '/'", field)
    if raw.startswith("/"):
        raise InvalidPathError(f"file path {raw!r} is absolute; give a path relative to the model", field)
    if len(raw) > MAX_PATH_LENGTH:
        raise InvalidPathError(f"file path longer than {MAX_PATH_LENGTH} characters", field)
    segments = raw.split("/")
    if len(segments) > MAX_PATH_DEPTH:
        raise InvalidPathError(f"file path {raw!r} is deeper than {MAX_PATH_DEPTH} directories", field)
    for seg in segments:
        if seg in ("", ".", ".."):
            raise InvalidPathError(f"file path {raw!r} has an empty, '.' or '..' segment", field)
        if len(seg) > MAX_SEGMENT_LENGTH:
            raise InvalidPathError(f"file path {raw!r} has a segment longer than {MAX_SEGMENT_LENGTH}", field)
        if _FORBIDDEN.search(seg):
            raise InvalidPathError(f"file path {raw!r} contains a control character or ':'", field)
    return raw


def validate_model_name(raw: object, field: str = "name") -> str:
    """`raw` if it is a file model's name (`name` or `namespace/name`, see names.FileModelRef); else 400."""
    if not isinstance(raw, str) or not raw:
        raise BadRequestError("model name is empty", field)
    if "\x00" in raw or "\\" in raw or raw.startswith("/") or ".." in raw:
        raise InvalidPathError(f"model name {raw!r} contains NUL, '\\', '..' or a leading '/'", field)
    try:
        FileModelRef.split_name(raw)
    except InvalidNameError as exc:
        raise BadRequestError(f"model name {raw!r} must be 'name' or 'namespace/name' (letters, digits, '_', '-', "
                              f"and '.' in the name, at most 80 characters each): {exc}", field) from None
    return raw


def validate_version(raw: object, field: str = "version") -> str:
    """`raw` if it is a file model's version (see names.FileModelRef); else 400."""
    try:
        if not isinstance(raw, str):
            raise InvalidNameError("not a string")
        FileModelRef.check_version(raw)
    except InvalidNameError:
        raise BadRequestError(f"version {raw!r} must match [A-Za-z0-9_][A-Za-z0-9_.-]* (at most 80 characters)",
                              field) from None
    return raw
