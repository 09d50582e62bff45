"""A `POST /api/create` request, checked whole before anything is fetched or written.

Fields as Ollama's api/types.go CreateRequest: `model` (or the older `name`), `from`, `files`, `adapters`,
`template`, `system`, `parameters`, `messages`, `license` (a string or a list), `stream` (default true),
`quantize`; the legacy `modelfile` (a Modelfile string, eldric/core/modelfile.py) fills the same fields,
and explicit JSON fields win over it. Unknown fields are ignored, as Ollama's JSON binding ignores them.
Parameters are Ollama's runtime options (api/types.go Options and Runner) with their types; a Modelfile
gives every value as text, converted here as Ollama's FormatParams does. A template must be a well-formed
Go template (its actions balanced: `if`/`range`/`with`/`block`/`define` each closed by `end`): a broken one
would fail every chat with the model, so it fails the create.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from eldric.core.digests import Digest
from eldric.core.errors import InvalidDigestError, InvalidNameError
from eldric.core.modelfile import ModelfileError, parse_modelfile
from eldric.core.names import ModelName
from eldric.core.request_errors import BadRequestError

INT_PARAMS = frozenset({"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
                        "num_gpu", "main_gpu", "num_thread", "draft_num_predict"})
FLOAT_PARAMS = frozenset({"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
                          "frequency_penalty"})
BOOL_PARAMS = frozenset({"use_mmap"})
LIST_PARAMS = frozenset({"stop"})
# Accepted and dropped, as Ollama's Modelfile parser does ("warning: parameter ... is deprecated").
DEPRECATED_PARAMS = frozenset({"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
                               "mirostat", "mirostat_tau", "mirostat_eta"})
ROLES = frozenset({"system", "user", "assistant", "tool"})
QUANTIZE_REFUSED = ("quantization is not done by the cluster; quantize the model before uploading it "
                    "(e.g. llama.cpp's llama-quantize) and create from the quantized GGUF")
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_OPENERS = ("if", "range", "with", "block", "define")


@dataclass(frozen=True)
class CreateSpec:
    """What to build: the name, where its weights come from, and the layers to set."""

    name: ModelName
    base: str | None = None                                    # `from`: a cluster or registry model
    files: dict[str, Digest] = field(default_factory=dict)     # filename -> uploaded blob
    adapters: dict[str, Digest] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: tuple[str, ...] = ()
    parameters: dict[str, object] = field(default_factory=dict)
    messages: tuple[dict, ...] = ()
    stream: bool = True

    @property
    def format(self) -> str:
        """`safetensors` when any file is one (Ollama's detectModelTypeFromFiles), else `gguf`."""
        return "safetensors" if any(f.lower().endswith(".safetensors") for f in self.files) else "gguf"


def parse_create(body: dict) -> CreateSpec:
    """The request as a CreateSpec; BadRequestError naming the field for anything the cluster cannot build."""
    if body.get("quantize") or body.get("quantization"):
        raise BadRequestError(QUANTIZE_REFUSED, field="quantize")
    if body.get("path"):
        raise BadRequestError("path (a Modelfile on the server's disk) is not supported; send modelfile or the "
                              "JSON fields", field="path")
    fields = _from_modelfile(body.get("modelfile"))
    fields.update({k: v for k, v in body.items() if v is not None and k != "modelfile"})
    stream = fields.get("stream", True)
    if not isinstance(stream, bool):
        raise BadRequestError("stream must be true or false", field="stream")
    base = fields.get("from")
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise BadRequestError("from must name a model", field="from")
    files, adapters = _digests(fields.get("files"), "files"), _digests(fields.get("adapters"), "adapters")
    if not base and not files:
        raise BadRequestError("neither 'from' or 'files' was specified", field="from")
    if len(adapters) > 1:
        raise BadRequestError("only one adapter is currently supported", field="adapters")
    template = _text(fields.get("template"), "template")
    if template:
        check_template(template)
    return CreateSpec(name=parse_name(fields.get("model") or fields.get("name")), base=base.strip() if base else None,
                      files=files, adapters=adapters, template=template, system=_text(fields.get("system"), "system"),
                      license=_licenses(fields.get("license")), parameters=parse_parameters(fields.get("parameters")),
                      messages=_messages(fields.get("messages")), stream=stream)


def parse_name(raw: object) -> ModelName:
    """A created model's name: Ollama's grammar, lowercase (OCI repositories are), no registry host of its own
    (it lives in the cluster's registry, where the agents pull registry.ollama.ai names from)."""
    if not isinstance(raw, str) or not raw:
        raise BadRequestError("model is required", field="model")
    try:
        name = ModelName.parse(raw)
    except InvalidNameError as exc:
        raise BadRequestError(str(exc), field="model") from None
    if not name.is_default_host:
        raise BadRequestError(f"model {raw!r} names the registry {name.host}: a created model is named without a "
                              "host, it lives in the cluster's registry", field="model")
    if name.repository != name.repository.lower():
        raise BadRequestError(f"model {raw!r}: model names are lowercase", field="model")
    return name


def _from_modelfile(text: object) -> dict:
    if text is None or text == "":
        return {}
    try:
        return parse_modelfile(text)  # type: ignore[arg-type]
    except ModelfileError as exc:
        raise BadRequestError(f"modelfile: {exc}", field="modelfile") from None


def _digests(raw: object, what: str) -> dict[str, Digest]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequestError(f"{what} must map file names to sha256 digests", field=what)
    out = {}
    for filename, digest in raw.items():
        path = PurePosixPath(filename) if isinstance(filename, str) else None
        if path is None or not filename or path.is_absolute() or ".." in path.parts or "\\" in filename \
                or "\x00" in filename:
            raise BadRequestError("file path must be relative", field=what)
        try:
            out[filename] = Digest.parse(digest)
        except InvalidDigestError as exc:
            raise BadRequestError(f"{what}[{filename!r}]: {exc}", field=what) from None
    return out


def _text(raw: object, what: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BadRequestError(f"{what} must be a string", field=what)
    return raw


def _licenses(raw: object) -> tuple[str, ...]:
    if raw is None or raw == "":
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise BadRequestError("license must be a string or a list of strings", field="license")
    return tuple(x for x in items if x)


def _messages(raw: object) -> tuple[dict, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequestError("messages must be a list of {role, content}", field="messages")
    out = []
    for m in raw:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content", ""), str):
            raise BadRequestError('each message needs a role ("system", "user", "assistant" or "tool") and a '
                                  "string content", field="messages")
        out.append({"role": m["role"], "content": m.get("content", "")})
    return tuple(out)


def parse_parameters(raw: object) -> dict[str, object]:
    """Ollama's runtime options with their types; a text value (from a Modelfile) is converted."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequestError("parameters must be an object", field="parameters")
    out: dict[str, object] = {}
    for key, value in raw.items():
        if key in DEPRECATED_PARAMS:
            continue
        out[key] = _parameter(key, value)
    return out


def _parameter(key: str, value: object) -> object:
    def bad(kind: str) -> BadRequestError:
        return BadRequestError(f"invalid value for parameter {key!r}: {value!r} is not {kind}", field="parameters")

    values = value if isinstance(value, list) else [value]
    if key in LIST_PARAMS:
        if not values or not all(isinstance(v, str) for v in values):
            raise bad("a string or a list of strings")
        return list(values)
    if key not in INT_PARAMS | FLOAT_PARAMS | BOOL_PARAMS:
        raise BadRequestError(f"unknown parameter {key!r}", field="parameters")
    if len(values) != 1:
        raise bad("one value")
    v = values[0]
    if key in BOOL_PARAMS:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise bad("true or false")
    try:
        if key in INT_PARAMS:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            return int(v)  # type: ignore[arg-type]
        if isinstance(v, bool):
            raise ValueError
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise bad("an integer" if key in INT_PARAMS else "a number") from None


def check_template(template: str) -> None:
    """Go text/template's structure: every `{{` closed, every block action closed by `{{ end }}`, `else` and
    `end` only inside one. BadRequestError ("template error: ...") otherwise."""
    opened: list[str] = []
    rest = _ACTION.sub("", template)
    if "{{" in rest:
        raise BadRequestError("template error: unclosed action ('{{' without '}}')", field="template")
    for action in _ACTION.findall(template):
        if action.startswith("/*"):
            continue
        word = action.split(None, 1)[0] if action.split() else ""
        if not word:
            raise BadRequestError("template error: missing value for command", field="template")
        if word in _OPENERS:
            opened.append(word)
        elif word == "end":
            if not opened:
                raise BadRequestError("template error: unexpected {{end}}", field="template")
            opened.pop()
        elif word == "else" and not opened:
            raise BadRequestError("template error: unexpected {{else}}", field="template")
    if opened:
        raise BadRequestError(f"template error: unexpected EOF: {{{{{opened[-1]}}}}} is never closed by {{{{end}}}}",
                              field="template")
