"""Model names the way Ollama writes them.

Grammar (after Ollama's `types/model/name.go::ParseName`)::

    name      := [host "/"] [namespace "/"] model [":" tag] ["@" digest]
    host      := part, may contain ":" (a port) and "."; at most 350 chars
    namespace := part without "."; at most 80 chars
    model     := part; at most 80 chars
    tag       := part; at most 80 chars
    part      := [A-Za-z0-9_] followed by [A-Za-z0-9_.-]*

Missing pieces default to `registry.ollama.ai`, `library` and `latest`. Because a
part can never start with "." nor hold "/", "\\" or NUL, a valid name is also a
safe relative path: `..`, absolute paths and backslashes are rejected here,
before anything touches disk. The parts are written once (`_PARTS`): the parser
checks with them and the OpenAPI pattern of a name (`OLLAMA_NAME_PATTERN`) is built
from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eldric.core.errors import InvalidNameError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 512

_FIRST = "A-Za-z0-9_"  # a part's first character: never "." nor "-"
_PARTS = {  # kind: (the characters after the first, most characters)
    "host": ("A-Za-z0-9_.:-", 350),
    "namespace": ("A-Za-z0-9_-", 80),
    "model": ("A-Za-z0-9_.-", 80),
    "tag": ("A-Za-z0-9_.-", 80),
}
# Unbounded here: check_part tells a part that is too long from one with a character not allowed.
_PART = {kind: (re.compile(f"[{_FIRST}][{rest}]*"), limit) for kind, (rest, limit) in _PARTS.items()}


def part_pattern(kind: str) -> str:
    """One `kind` part as a regex, its length limit a counted repetition (ECMA-262 and Python's re read it alike)."""
    rest, limit = _PARTS[kind]
    return f"[{_FIRST}][{rest}]{{0,{limit - 1}}}"


# The whole name as an OpenAPI pattern, so a client or a fuzzer knows what is accepted. The views still
# parse with ModelName (400 naming the field); tests/unit/test_api_patterns.py proves the two agree.
OLLAMA_NAME_PATTERN = (rf"^(?:(?:{part_pattern('host')}/)?{part_pattern('namespace')}/)?"
                       rf"{part_pattern('model')}(?::{part_pattern('tag')})?$")


def check_part(kind: str, value: str, raw: str) -> None:
    """Raise InvalidNameError unless `value` is a valid `kind` part (host, namespace, model, tag)."""
    pattern, limit = _PART[kind]
    if not value:
        raise InvalidNameError(f"invalid model name {raw!r}: empty {kind}")
    if len(value) > limit:
        raise InvalidNameError(f"invalid model name {raw!r}: {kind} longer than {limit} characters")
    if not pattern.fullmatch(value):
        raise InvalidNameError(f"invalid model name {raw!r}: {kind} {value!r} has characters that are not allowed")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, raw: str) -> ModelName:
        """Parse `raw` with Ollama's defaults; raise InvalidNameError naming the bad part."""
        if not isinstance(raw, str) or not raw.strip():
            raise InvalidNameError("invalid model name: empty")
        if len(raw) > MAX_NAME_LENGTH:
            raise InvalidNameError(f"invalid model name: longer than {MAX_NAME_LENGTH} characters")
        if "\x00" in raw or "\\" in raw:
            raise InvalidNameError(f"invalid model name {raw!r}: NUL and backslashes are not allowed")
        rest = raw.strip()
        if "@" in rest:
            # A pinned digest is accepted by Ollama but we pull by tag only.
            raise InvalidNameError(f"invalid model name {raw!r}: '@digest' references are not supported")
        tag = DEFAULT_TAG
        head, sep, tail = rest.rpartition(":")
        if sep and "/" not in tail:  # a ":" followed by "/" belongs to a host:port
            rest, tag = head, tail
            check_part("tag", tag, raw)
        parts = rest.split("/")
        if len(parts) > 3:
            raise InvalidNameError(f"invalid model name {raw!r}: too many '/' separated parts")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            (model,) = parts
        check_part("host", host, raw)
        check_part("namespace", namespace, raw)
        check_part("model", model, raw)
        return cls(host=host, namespace=namespace, model=model, tag=tag)

    @property
    def repository(self) -> str:
        """The registry repository path: `namespace/model`."""
        return f"{self.namespace}/{self.model}"

    @property
    def is_default_host(self) -> bool:
        return self.host == DEFAULT_HOST

    def manifest_parts(self) -> tuple[str, str, str, str]:
        """Path components of this name under an Ollama `manifests/` directory."""
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def short(self) -> str:
        """The name as Ollama displays it: host and namespace dropped when default."""
        prefix = ""
        if not self.is_default_host:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


@dataclass(frozen=True)
class FileModelRef:
    """The name of a file model (registry, URL, peer): what the registry stores and every worker catalogs.

    Grammar::

        reference := [namespace "/"] name [":" version]
        namespace := Ollama's namespace part (no "."); at most 80 chars
        name      := Ollama's model part; at most 80 chars
        version   := Ollama's tag part; at most 80 chars; default "latest"

    The parts follow Ollama's grammar on purpose: a file model is also served by Ollama
    under this very name (`acme/house:v1`), so a name one backend could not store is
    refused everywhere, at upload and before a job is queued. None may hold "..".
    """

    namespace: str | None
    name: str
    version: str

    @classmethod
    def parse(cls, raw: object, *, default_version: str = DEFAULT_TAG) -> FileModelRef:
        if not isinstance(raw, str) or not raw:
            raise InvalidNameError("invalid model reference: empty or not a string")
        if len(raw) > MAX_NAME_LENGTH:
            raise InvalidNameError(f"invalid model reference: longer than {MAX_NAME_LENGTH} characters")
        model, sep, version = raw.partition(":")
        if sep:
            cls.check_version(version, raw)
        else:
            version = default_version
        namespace, name = cls.split_name(model, raw)
        return cls(namespace=namespace, name=name, version=version)

    @staticmethod
    def split_name(model: str, raw: str | None = None) -> tuple[str | None, str]:
        """(namespace or None, name) of `model` (`name` or `namespace/name`); raise InvalidNameError."""
        raw = model if raw is None else raw
        parts = model.split("/")
        if len(parts) > 2:
            raise InvalidNameError(f"invalid model name {raw!r}: use 'name' or 'namespace/name'")
        if "\x00" in model or ".." in model:
            raise InvalidNameError(f"invalid model name {raw!r}: NUL and '..' are not allowed")
        if len(parts) == 2:
            check_part("namespace", parts[0], raw)
        check_part("model", parts[-1], raw)
        return (parts[0] if len(parts) == 2 else None), parts[-1]

    @staticmethod
    def check_version(version: str, raw: str | None = None) -> None:
        raw = version if raw is None else raw
        check_part("tag", version, raw)
        if ".." in version:
            raise InvalidNameError(f"invalid model reference {raw!r}: version may not hold '..'")

    @property
    def model(self) -> str:
        """`namespace/name` or `name`: the model without its version."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def path_parts(self) -> tuple[str, ...]:
        """Directory components of this model under a catalog root (namespace first)."""
        return (self.namespace, self.name) if self.namespace else (self.name,)

    def __str__(self) -> str:
        return f"{self.model}:{self.version}"
