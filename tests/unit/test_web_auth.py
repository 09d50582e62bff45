"""eldric.web.auth: the one bearer check (scheme case-insensitive, constant-time compare)."""

from __future__ import annotations

import pytest

from eldric.web.auth import bearer_token, has_token


@pytest.mark.parametrize("header, token", [("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER abc", "abc"),
                                           ("Basic abc", None), ("Bearer", None), ("", None), (None, None),
                                           ("Bearerabc", None)])
def test_bearer_token(header, token) -> None:
    assert bearer_token(header) == token


def test_has_token() -> None:
    assert has_token("bearer s3cret", "s3cret")
    assert not has_token("Bearer s3cre", "s3cret")
    assert not has_token(None, "s3cret")
