"""One settings loader for every service: pydantic-settings over ELDRIC_* variables.

A service declares its settings as fields of an `EnvSettings` subclass: the default,
the variable (`ELDRIC_<FIELD>` unless the field names another with `validation_alias`),
the meaning (`description`) and the constraints. `from_env(env, **explicit)` gives
explicit non-None arguments (command-line flags) precedence over the variables, which
win over the defaults; an empty variable counts as unset. Every bad value is reported
at start-up as one `SettingsError` naming the setting and its variable.

Why pydantic-settings and not environs: the agent's settings are typed (Path, tuple,
int | None) and pydantic converts and validates those from the annotations alone.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pathlib import Path

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from eldric.core.errors import EldricError
from eldric.core.redaction import redact_urls

PREFIX = "ELDRIC_"

# The mapping `from_env` was given, read by the env source while the model is built.
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("eldric_settings_env", default=None)


class SettingsError(EldricError, ValueError):
    """A bad or missing configuration value, reported at start-up."""


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(raw: str | int) -> int:
    """Bytes from `1073741824`, `512M`, `20G`, `1TiB` (binary units: K = 1024)."""
    if isinstance(raw, int):
        return raw
    match = _SIZE.match(raw)
    if not match:
        raise ValueError(f"not a size: {raw!r} (examples: 1048576, 512M, 20G, 1T)")
    number, unit = int(match.group(1)), (match.group(2) or "B")[0].upper()
    return number << {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]


# A byte count written as a number or with a binary unit (`512M`, `20G`, `1T`).
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(raw: str | int | float) -> float:
    """Seconds from `3600`, `90s`, `30m`, `1h`, `2d`."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    match = _DURATION.match(str(raw))
    if not match:
        raise ValueError(f"not a duration: {raw!r} (examples: 3600, 90s, 30m, 1h, 2d)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2).lower()]


# A time span in seconds, written as a number or with a unit (`90s`, `30m`, `1h`, `2d`).
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]

# A path; `~` is the user's home.
UserPath = Annotated[Path, AfterValidator(lambda p: p.expanduser())]

# A comma-separated list in the environment (`a, b,,c` -> ("a", "b", "c")); not JSON.
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_commas)]


def _is_secret(field: str) -> bool:
    return any(word in field for word in ("secret", "token", "password"))


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading the mapping given to `from_env`.

    Outside `from_env` it reads nothing: constructing settings directly (tests, embedding)
    gives the defaults and the arguments, never whatever the process happens to have set.
    """

    def _load_env_vars(self) -> Mapping[str, str | None]:
        given = _ENVIRON.get()
        if given is None:
            return {}
        fold = (lambda k: k) if self.case_sensitive else str.lower  # as the library does with os.environ
        return {fold(k): v for k, v in given.items() if v != ""}


class EnvSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True,
                                      frozen=True, extra="ignore", populate_by_name=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, _MappingEnvSource(settings_cls)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **explicit: Any):
        """Explicit non-None arguments, then `env` (default os.environ), then the defaults."""
        token = _ENVIRON.set(dict(os.environ if env is None else env))
        try:
            return cls(**{k: v for k, v in explicit.items() if v is not None})
        except ValidationError as exc:
            raise SettingsError(cls.describe_errors(exc)) from None
        finally:
            _ENVIRON.reset(token)

    @classmethod
    def env_name(cls, field: str) -> str:
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else PREFIX + field.upper()

    @classmethod
    def describe_errors(cls, exc: ValidationError) -> str:
        """One line per bad value: `<field> (<VARIABLE>): <what is wrong>`."""
        by_alias = {cls.env_name(name).lower(): name for name in cls.model_fields}
        lines = []
        for error in exc.errors(include_url=False):
            loc = str(error["loc"][0]) if error["loc"] else ""
            name = by_alias.get(loc.lower(), loc)
            if error["type"] == "missing":
                meaning = cls.model_fields[name].description if name in cls.model_fields else ""
                lines.append(f"missing setting: {cls.env_name(name) if name in cls.model_fields else name}"
                             f"{f' ({meaning})' if meaning else ''}")
                continue
            message = redact_urls(str(error["msg"]).removeprefix("Value error, "))  # a validator may quote the value
            where = f"{name} ({cls.env_name(name)})" if name in cls.model_fields else (name or "settings")
            shown = error.get("input")
            if isinstance(shown, str):
                shown = "(hidden)" if _is_secret(name) else redact_urls(shown)
            got = f", got {shown!r}" if isinstance(shown, (str, int, float)) and repr(shown) not in message else ""
            lines.append(f"{where}: {message}{got}")
        return "; ".join(lines)

    def effective(self) -> str:
        """`VARIABLE=value ...` for every setting, secrets masked: what a service logs at start."""
        shown = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if _is_secret(name):
                value = "(set)" if value else "(empty)"
            elif isinstance(value, str):
                value = redact_urls(value)
            elif isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, dict):  # key=value pairs, as they are written (labels)
                value = ",".join(f"{k}={v}" for k, v in value.items())
            shown.append(f"{type(self).env_name(name)}={value}")
        return " ".join(shown)

    @classmethod
    def table(cls) -> list[tuple[str, object, str]]:
        """(variable, default, meaning) for every setting, in declaration order (docs, --help)."""
        return [(cls.env_name(name), f.default, f.description or "") for name, f in cls.model_fields.items()]
