"""Ollama's Modelfile, parsed into the JSON form of `POST /api/create` (the form the cluster builds from).

Grammar (Ollama's parser/parser.go, read for its rules; written here line by line)::

    modelfile := (blank | comment | command)*
    comment   := "#" anything up to the end of the line
    command   := NAME space+ value          NAME is any case: FROM ADAPTER TEMPLATE SYSTEM LICENSE
               | "PARAMETER" space+ key space+ value          key := [A-Za-z0-9_]+
               | "MESSAGE" space+ role space+ value           role := system | user | assistant
    value     := '\"\"\"' anything, newlines too, '\"\"\"'  |  '"' anything, newlines too, '"'  |  rest of the line

A FROM (required) naming a blob (`sha256:<hex>` or `@sha256:<hex>`, what older Ollama clients sent after
uploading the file) becomes `files`; any other FROM names a model (`from`). A FROM that is a file path
cannot be read by a server: the client uploads it first (`POST /api/blobs/...`) and names its digest.
Repeated PARAMETER keys collect into a list (`stop`); LICENSE and MESSAGE lines accumulate in order.
"""

from __future__ import annotations

import re

from eldric.core.errors import EldricError

COMMANDS = ("from", "adapter", "template", "system", "license", "parameter", "message",
            "draft", "renderer", "parser", "requires")
ROLES = ("system", "user", "assistant")
_BLOB = re.compile(r"^@?(sha256[:-][0-9a-fA-F]{64})$")
_KEY = re.compile(r"[A-Za-z0-9_]+")


class ModelfileError(EldricError, ValueError):
    """A Modelfile that does not follow the grammar; the message names the line."""


def parse_modelfile(text: str) -> dict:
    """The create request a Modelfile says, as `POST /api/create`'s JSON fields."""
    if not isinstance(text, str):
        raise ModelfileError("modelfile must be a string")
    out: dict = {}
    parameters: dict[str, object] = {}
    for line, name, key, value in _commands(text.lstrip("\ufeff").replace("\r\n", "\n")):
        _apply(out, parameters, line, name, key, value)
    if "from" not in out and "files" not in out:
        raise ModelfileError("no FROM line")
    if parameters:
        out["parameters"] = parameters
    return out


def _blob(value: str) -> str | None:
    found = _BLOB.match(value.strip())
    return found.group(1).replace("-", ":", 1).lower() if found else None


def _apply(out: dict, parameters: dict, line: int, name: str, key: str, value: str) -> None:
    if name == "from":
        if _blob(value):
            out["files"] = {"model.gguf": _blob(value)}
        elif value.startswith(("/", "./", "../", "~")) or value.lower().endswith((".gguf", ".safetensors")):
            raise ModelfileError(f"(line {line}): FROM {value}: a server cannot read a client's file; upload it "
                                 "with POST /api/blobs/sha256:<hex> and write FROM sha256:<hex>")
        else:
            out["from"] = value
    elif name == "adapter":
        if not _blob(value):
            raise ModelfileError(f"(line {line}): ADAPTER must name an uploaded blob (sha256:<hex>)")
        out["adapters"] = {"adapter.gguf": _blob(value)}
    elif name in ("template", "system"):
        out[name] = value
    elif name == "license":
        out.setdefault("license", []).append(value)
    elif name == "message":
        if key not in ROLES:
            raise ModelfileError(f'(line {line}): message role must be one of "system", "user", or "assistant"')
        out.setdefault("messages", []).append({"role": key, "content": value})
    elif name == "parameter":
        old = parameters.get(key)
        parameters[key] = [*old, value] if isinstance(old, list) else [old, value] if old is not None else value
    else:  # draft, renderer, parser, requires: Ollama features the cluster does not build
        raise ModelfileError(f"(line {line}): {name.upper()} is not supported by the cluster's create")


def _commands(text: str):
    """(line, command, key, value) per command; `key` is PARAMETER's name or MESSAGE's role, else ''."""
    i, line, n = 0, 1, len(text)
    while i < n:
        if text[i] in " \t\n":
            line += text[i] == "\n"
            i += 1
            continue
        if text[i] == "#":
            i = _end_of_line(text, i)
            continue
        word = re.match(r"[A-Za-z]+", text[i:])
        name = word.group(0).lower() if word else ""
        if name not in COMMANDS or i + len(name) >= n or text[i + len(name)] not in " \t":
            raise ModelfileError(f"(line {line}): command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS))
        i = _skip_blanks(text, i + len(name))
        key = ""
        if name in ("parameter", "message"):
            found = _KEY.match(text[i:])
            if not found or i + found.end() >= n or text[i + found.end()] not in " \t":
                raise ModelfileError(f"(line {line}): {name.upper()} needs a "
                                     f"{'name' if name == 'parameter' else 'role'} and a value")
            key, i = found.group(0), _skip_blanks(text, i + found.end())
        value, end = _value(text, i, line)
        if not value.strip():
            raise ModelfileError(f"(line {line}): {name.upper()} needs a value")
        yield line, name, key, value
        line += text.count("\n", i, end)
        i = end


def _skip_blanks(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _end_of_line(text: str, i: int) -> int:
    eol = text.find("\n", i)
    return len(text) if eol < 0 else eol


def _value(text: str, i: int, line: int) -> tuple[str, int]:
    """The value at `i`: a quoted one (its inside; it may span lines) or the rest of the line, stripped."""
    for quote in ('"""', '"'):
        if text.startswith(quote, i):
            close = text.find(quote, i + len(quote))
            if close < 0:
                raise ModelfileError(f"(line {line}): unterminated {quote} string")
            end = close + len(quote)
            if text[end:_end_of_line(text, end)].strip():
                raise ModelfileError(f"(line {line + text.count(chr(10), i, end)}): text after a closing {quote}")
            return text[i + len(quote):close], end
    end = _end_of_line(text, i)
    return text[i:end].strip(), end
