"""eldric.core.digests: the sha256 value type, its validation and streaming hashing."""

from __future__ import annotations

import hashlib
import io

import pytest

from eldric.core.digests import Digest, is_digest, sha256_of_file
from eldric.core.errors import InvalidDigestError

HEX = hashlib.sha256(b"hello").hexdigest()


def test_parse_accepts_the_canonical_form():
    digest = Digest.parse(f"sha256:{HEX}")
    assert digest.hex == HEX
    assert str(digest) == f"sha256:{HEX}"


def test_parse_accepts_ollamas_file_form():
    assert Digest.parse(f"sha256-{HEX}") == Digest.parse(f"sha256:{HEX}")


def test_filename_uses_a_dash_so_no_colon_reaches_the_filesystem():
    assert Digest.parse(f"sha256:{HEX}").filename == f"sha256-{HEX}"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        HEX,
        f"sha512:{HEX}",
        f"SHA256:{HEX}",
        f"sha256:{HEX.upper()}",
        f"sha256-{HEX.upper()}",
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX}0",
        f"sha256:{HEX[:-1]}g",
        f" sha256:{HEX}",
        f"sha256:{HEX} ",
        f"sha256:../../{HEX[6:]}",
        f"sha256:{HEX[:-2]}/x",
        "sha256:",
        None,
        123,
        b"sha256:" + HEX.encode(),
    ],
)
def test_parse_rejects_anything_but_64_lowercase_hex(raw):
    with pytest.raises(InvalidDigestError):
        Digest.parse(raw)
    assert not is_digest(raw)


@pytest.mark.parametrize("raw", [f"sha256:{HEX}\n", f"sha256-{HEX}\n"])
def test_parse_rejects_a_trailing_newline(raw):
    with pytest.raises(InvalidDigestError):
        Digest.parse(raw)


def test_invalid_digest_error_is_a_value_error():
    with pytest.raises(ValueError):
        Digest.parse("nope")


def test_is_digest_accepts_only_the_canonical_form():
    assert is_digest(f"sha256:{HEX}")
    assert not is_digest(f"sha256-{HEX}")


def test_of_bytes_is_the_sha256_of_the_bytes():
    assert Digest.of_bytes(b"hello") == Digest(HEX)
    assert Digest.of_bytes(b"") == Digest(hashlib.sha256(b"").hexdigest())


def test_digests_are_comparable_and_hashable_values():
    assert {Digest.parse(f"sha256:{HEX}"), Digest(HEX)} == {Digest(HEX)}
    assert Digest.of_bytes(b"a") != Digest.of_bytes(b"b")


def test_sha256_of_file_hashes_from_the_current_position():
    data = bytes(range(256)) * 10_000  # spans several internal chunks
    f = io.BytesIO(data)
    f.seek(100)
    assert sha256_of_file(f).hexdigest() == hashlib.sha256(data[100:]).hexdigest()


@pytest.mark.parametrize("limit", [0, 1, 1000, (1 << 20) + 7, 10**9])
def test_sha256_of_file_stops_at_limit(limit):
    data = b"x" * ((1 << 20) + 5000)
    f = io.BytesIO(data)
    assert sha256_of_file(f, limit=limit).hexdigest() == hashlib.sha256(data[:limit]).hexdigest()
    assert f.tell() == min(limit, len(data))
