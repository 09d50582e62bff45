"""Worker labels as operators write them: `zone=a,gpu=h100` (the agent's ELDRIC_LABELS, a worker selector).

One parser for both, so a selector can name exactly the labels an agent can carry. A key is a
DNS-label-like name (letters, digits, '-', '.', '_', starting and ending with a letter or digit,
at most 63 characters) because keys appear in URLs (`?selector=zone=a`), metrics and the
dashboard; a value is at most 63 such characters and may be empty (`spot=`).
"""

from __future__ import annotations

import re

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^{_NAME}\Z")
_VALUE = re.compile(rf"^(?:{_NAME})?\Z")
# A selector as a URL query writes it (`zone=a,gpu=h100`, no spaces): the same in Python and in JSON Schema.
SELECTOR_PATTERN = rf"^(?:{_NAME}=(?:{_NAME})?(?:,{_NAME}=(?:{_NAME})?)*)?$"
_SELECTOR = re.compile(SELECTOR_PATTERN.removesuffix("$") + r"\Z")


def parse_labels(text: str) -> dict[str, str]:
    """`zone=a, gpu=h100` -> {"zone": "a", "gpu": "h100"}; ValueError naming the first bad pair."""
    out: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        key, eq, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise ValueError(f"label {pair!r} has no '=': write key=value, e.g. zone=a")
        if not key:
            raise ValueError(f"label {pair!r} has an empty key")
        if not _KEY.match(key):
            raise ValueError(f"label key {key!r} is not a name: letters, digits, '-', '.', '_', "
                             "starting and ending with a letter or digit, at most 63 characters")
        if not _VALUE.match(value):
            raise ValueError(f"label {key}'s value {value!r}: letters, digits, '-', '.', '_', "
                             "starting and ending with a letter or digit, at most 63 characters")
        if key in out and out[key] != value:
            raise ValueError(f"label {key!r} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def parse_selector(text: str) -> list[tuple[str, str]]:
    """`zone=a,gpu=h100` -> [("zone", "a"), ("gpu", "h100")]; ValueError unless it has SELECTOR_PATTERN's shape.

    Pairs, not a dict: `zone=a,zone=b` is a selector no worker matches, not an error."""
    if not _SELECTOR.match(text):
        raise ValueError(f"not a label selector: {text[:100]!r} (key=value pairs joined by commas, e.g. zone=a,gpu=h100)")
    return [(key, value) for key, _, value in (pair.partition("=") for pair in text.split(",") if pair)]


def matches(labels: dict[str, str], selector: dict[str, str] | list[tuple[str, str]]) -> bool:
    """Every key=value of the selector is one of the labels."""
    pairs = selector.items() if isinstance(selector, dict) else selector
    return all(labels.get(k) == v for k, v in pairs)
