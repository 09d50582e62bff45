"""Reading a request's JSON body: the one place every JSON endpoint of the controller and the registry reads one.

The flask-smorest views (through `eldric.web.blueprints`' parser) and the controller's Ollama endpoints
alike, so a hostile body gets the same bounds everywhere (issue 21, findings 8 and 9):

- at most `MAX_JSON_BYTES`: a `Content-Length` over it is refused unread, and a chunked body (which has
  none) is read only up to one byte past it, so a 64 MiB body costs 1 MiB of memory, not 64 (413);
- UTF-8 only (RFC 8259 for JSON between systems), else 400;
- nested at most `MAX_JSON_DEPTH` levels, counted by a scan of the brackets outside strings before the
  parser runs: Python's parser recurses once per level and a 100 kB body 50,000 deep made a
  RecursionError (a 500); deeper is 400, "nested deeper than 64 levels";
- no lone UTF-16 surrogates (`"\\ud800"`): JSON allows them as escapes, but they cannot be encoded as
  UTF-8, so SQLite, Redis and the file system would fail on them later with a 500 (400 instead).

Refusals are request errors (TooLargeError 413, BadRequestError 400 naming the field `json`); each
endpoint family answers them in its own shape (Ollama's `{"error": ...}`, the API's problem format).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

import flask

from eldric.core.request_errors import BadRequestError, TooLargeError

MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 64

# A string literal, or an unterminated one running to the end: possessive, so each byte is looked at
# once (a pattern that backtracks would take quadratic time on `"\"\"\"…`).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = [0] * 256
for _open, _close in (b"[]", b"{}"):
    _STEP[_open], _STEP[_close] = 1, -1
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]", re.ASCII)


def read_json_body(req: flask.Request) -> Any:
    """The request's body as a JSON value, within the bounds above; a RequestError otherwise."""
    if (req.content_length or 0) > MAX_JSON_BYTES:
        raise _too_large()
    # One byte past the bound tells "exactly MAX_JSON_BYTES" from "more"; werkzeug's stream stops there,
    # chunked or not (set before the stream is first touched, which no hook before a view does).
    req.max_content_length = MAX_JSON_BYTES + 1
    data = req.get_data(cache=True)
    if len(data) > MAX_JSON_BYTES:
        raise _too_large()
    return parse_json_body(data)


def parse_json_body(data: bytes) -> Any:
    """`data` as a JSON value: UTF-8, nested at most MAX_JSON_DEPTH levels, no lone surrogates."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"not UTF-8 (byte {exc.start})") from None
    if is_nested_deeper(data, MAX_JSON_DEPTH):
        raise _invalid(f"nested deeper than {MAX_JSON_DEPTH} levels; send a flatter document")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid(str(exc)) from None
    if _SURROGATE_ESCAPE.search(text) and has_lone_surrogate(value):
        raise _invalid("a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not text")
    return value


def is_nested_deeper(data: bytes, levels: int) -> bool:
    """Whether the arrays and objects of JSON text `data` nest deeper than `levels` (brackets in strings are text)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    # Too few brackets to nest that deep is the usual body's case: no count needed.
    return len(brackets) > levels and max(accumulate(map(_STEP.__getitem__, brackets))) > levels


def has_lone_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a string (or key) that UTF-8 cannot encode."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_large() -> TooLargeError:
    return TooLargeError(f"JSON body larger than {MAX_JSON_BYTES} bytes (1 MiB); send a smaller one", "json")


def _invalid(problem: str) -> BadRequestError:
    return BadRequestError(f"invalid JSON body: {problem}", "json")
