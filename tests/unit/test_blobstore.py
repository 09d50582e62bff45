"""eldric.core.blobstore: content-addressed files that are never visible half-written."""

from __future__ import annotations

import os
import stat

import pytest

from eldric.core.blobstore import BlobStore
from eldric.core.digests import Digest
from eldric.core.errors import DigestMismatchError

DATA = b"some model weights " * 1000


@pytest.fixture
def store(blob_store) -> BlobStore:
    return blob_store


def visible_files(store: BlobStore) -> list[str]:
    return sorted(os.listdir(store.root)) if store.root.exists() else []


def test_put_stream_stores_the_bytes_under_their_digest(store):
    chunks = [DATA[:7], DATA[7:5000], b"", DATA[5000:]]
    digest, size = store.put_stream(chunks)
    assert digest == Digest.of_bytes(DATA)
    assert size == len(DATA)
    assert store.path(digest).read_bytes() == DATA
    assert store.path(digest).name == f"sha256-{digest.hex}"
    assert visible_files(store) == [digest.filename]


def test_put_stream_with_the_right_expected_digest_commits(store):
    expected = Digest.of_bytes(DATA)
    assert store.put_stream(iter([DATA]), expected) == (expected, len(DATA))
    assert store.has(expected, len(DATA))


def test_committed_blob_is_world_readable(store):
    digest = store.put_bytes(DATA)
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o644


def test_mismatch_raises_and_leaves_nothing_visible(store):
    expected = Digest.of_bytes(b"what the manifest promised")
    with pytest.raises(DigestMismatchError) as info:
        store.put_stream([DATA], expected)
    assert str(expected) in str(info.value)
    assert str(Digest.of_bytes(DATA)) in str(info.value)
    assert not store.has(expected)
    assert not store.has(Digest.of_bytes(DATA))
    assert visible_files(store) == []


def test_failing_source_leaves_no_temp_file(store):
    def chunks():
        yield DATA[:100]
        raise ConnectionError("source went away")

    with pytest.raises(ConnectionError):
        store.put_stream(chunks())
    assert visible_files(store) == []


def test_put_bytes_returns_the_digest(store):
    assert store.put_bytes(b"") == Digest.of_bytes(b"")
    assert store.path(Digest.of_bytes(b"")).read_bytes() == b""


def test_put_is_idempotent(store):
    first = store.put_bytes(DATA)
    second = store.put_bytes(DATA)
    assert first == second
    assert visible_files(store) == [first.filename]


def test_has_checks_presence_and_optionally_size(store):
    digest = store.put_bytes(DATA)
    missing = Digest.of_bytes(b"never stored")
    assert store.has(digest)
    assert store.has(digest, len(DATA))
    assert not store.has(digest, len(DATA) - 1)
    assert not store.has(digest, len(DATA) + 1)
    assert not store.has(missing)
    assert not store.has(missing, 0)
    assert store.size(digest) == len(DATA)


def test_has_on_a_store_that_does_not_exist_yet(tmp_path):
    assert not BlobStore(tmp_path / "nowhere").has(Digest.of_bytes(b"x"))
    assert list(BlobStore(tmp_path / "nowhere").digests()) == []


def test_digests_lists_only_blob_files(store):
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    f, tmp = store.temp_file()  # an in-flight write
    f.close()
    (store.root / "sha256-short").write_bytes(b"x")
    (store.root / ("sha256-" + "A" * 64)).write_bytes(b"x")  # right length, not a valid digest
    (store.root / ("sha256-" + "c" * 64)).mkdir()  # a directory, not a blob
    (store.root / "notes.txt").write_text("x")
    assert sorted(d.hex for d in store.digests()) == sorted([a.hex, b.hex])
    assert tmp.exists()


def test_temp_file_is_unique_hidden_and_in_the_store(store):
    (f1, p1), (f2, p2) = store.temp_file(), store.temp_file(".part")
    f1.close()
    f2.close()
    assert p1 != p2
    assert p1.parent == p2.parent == store.root
    assert p1.name.startswith(".") and p2.name.endswith(".part")


def test_commit_moves_a_verified_file_into_place(store):
    f, tmp = store.temp_file()
    with f:
        f.write(DATA)
    final = store.commit(tmp, Digest.of_bytes(DATA))
    assert final == store.path(Digest.of_bytes(DATA))
    assert final.read_bytes() == DATA
    assert not tmp.exists()


def test_delete(store):
    digest = store.put_bytes(DATA)
    assert store.delete(digest) is True
    assert not store.has(digest)
    assert store.delete(digest) is False
