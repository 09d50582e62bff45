"""How a URL becomes text: the one rule for every message, hint, log line, job record, view and metric label.

A URL's userinfo (`user:password@`: a mirror URL carries the cluster secret there, a Redis URL its
password) is shown as `***@`, and its query string and fragment (an S3 signature, a token realm's
parameters, a Redis `?password=`) are dropped:

    https://eldric:s3cret@data-node:8892/v2/x?X-Amz-Signature=abc  ->  https://***@data-node:8892/v2/x

`redact_url` takes a URL we hold; `redact_urls` takes free text that may name URLs (an HTTP or
Redis library's own message, a setting's value) and redacts each of them, and the query strings of
the relative URLs such libraries name (`Max retries exceeded with url: /m.gguf?X-Amz-Signature=…`).
`host_of` is a URL's `host[:port]` alone, for sentences about a connection. Neither ever raises:
a malformed URL is shown redacted as far as it can be parsed (issue 21).
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://rest, up to whitespace, quotes, brackets or a closing parenthesis (how libraries quote URLs).
_ABSOLUTE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]*")
# A relative URL (a path) with a query string or fragment, left once absolute URLs are redacted.
_RELATIVE = re.compile(r"(/[^\s?#'\"<>()]*)[?#][^\s'\"<>()]+")


def _split(url: str) -> tuple[str, str, str]:
    """(scheme + '://' or '', authority, the rest) of `url`, by the characters that end an authority."""
    head, sep, rest = url.partition("://")
    if not sep:
        return "", "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return head + sep, rest[:end], rest[end:]


def redact_url(url: str) -> str:
    """`url` as text: userinfo shown as `***@`, query string and fragment dropped."""
    head, authority, rest = _split(url)
    if "@" in authority:
        authority = f"{MASK}@{authority.rpartition('@')[2]}"
    return head + authority + re.split(r"[?#]", rest, maxsplit=1)[0]


def host_of(url: str) -> str:
    """The `host[:port]` of `url`, never its userinfo (the redacted URL when it names no host)."""
    _, authority, _ = _split(url)
    return authority.rpartition("@")[2] or redact_url(url)


def redact_urls(text: str) -> str:
    """`text` with every URL in it redacted (redact_url), and the query strings of relative ones dropped."""
    return _RELATIVE.sub(r"\1", _ABSOLUTE.sub(lambda m: redact_url(m.group(0)), text))
