"""How URLs become text (eldric/core/redaction.py): credentials masked, query strings dropped, never an error."""

from __future__ import annotations

import pytest

from eldric.core.redaction import host_of, redact_url, redact_urls


@pytest.mark.parametrize("url, shown", [
    ("https://user:pw@minio.local:9000/b/m.gguf?X-Amz-Signature=s3cret", "https://***@minio.local:9000/b/m.gguf"),
    ("http://eldric:s3cret@data-node:8892", "http://***@data-node:8892"),
    ("https://token@h/a#s3cret", "https://***@h/a"),
    ("https://u:p@h:8443/a/b?sig=1", "https://***@h:8443/a/b"),
    ("https://h/a/b", "https://h/a/b"),
    ("redis://:s3cret@redis:6379/0", "redis://***@redis:6379/0"),
    ("redis://redis:6379/0?password=s3cret", "redis://redis:6379/0"),
    ("sentinel://app:s3cret@s1:26379,s2/0?master=m", "sentinel://***@s1:26379,s2/0"),
    ("http://u:s3cret@[::1/x", "http://***@[::1/x"),  # malformed, still redacted
    ("http://u:s3cret@host:99999/x", "http://***@host:99999/x"),
    ("/v2/x/blobs/uploads/1?_state=s3cret", "/v2/x/blobs/uploads/1"),
    ("", ""),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("url, host", [
    ("http://eldric:s3cret@data-node:8892/v2/", "data-node:8892"),
    ("https://[::1]:8443?sig=s3cret", "[::1]:8443"),
    ("http://h", "h"),
])
def test_host_of_never_shows_the_userinfo(url: str, host: str) -> None:
    assert host_of(url) == host


def test_redact_urls_in_a_library_message() -> None:
    text = ("HTTPSConnectionPool(host='b.s3.example', port=443): Max retries exceeded with url: "
            "/m.gguf?X-Amz-Signature=s3cret&X-Amz-Date=1 (Caused by NewConnectionError(...)); "
            "No connection adapters were found for 'ftp://u:s3cret@tokens.example/t?sig=s3cret'")
    shown = redact_urls(text)
    assert "s3cret" not in shown
    assert "with url: /m.gguf (Caused" in shown and "'ftp://***@tokens.example/t'" in shown


def test_redact_urls_leaves_prose_alone() -> None:
    text = "Redis had lost this worker's record (restarted?); job #3 of C# at 10:30; 50% done?"
    assert redact_urls(text) == text
