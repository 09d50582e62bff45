"""RegistryService without HTTP: drafts, commit, dedupe, delete, sessions, limits, housekeeping."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from eldric.core.errors import DigestMismatchError
from eldric.core.request_errors import (BadRequestError, ConflictError, InvalidFormatError, InvalidPathError,
                                   NotFoundError, RangeNotSatisfiableError, TooLargeError)
from registry.service import RegistryService
from testbed.gguf_models import write_llama_gguf


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    return write_llama_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf").read_bytes()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(tmp_path: Path, clock: Clock) -> RegistryService:
    return RegistryService(tmp_path / "store", min_free_bytes=0, max_file_bytes=4 << 20,
                           max_model_bytes=6 << 20, clock=clock)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blobs(svc: RegistryService) -> set[str]:
    return {p.name for p in svc.blobs.root.iterdir()}


def test_single_file_model_is_listed_with_location_and_tree(svc: RegistryService, gguf_bytes: bytes) -> None:
    model = svc.upload_model(name="tiny", filename="tiny.gguf", stream=io.BytesIO(gguf_bytes))
    assert model["state"] == "ready" and model["version"] == "v1" and model["format"] == "gguf"
    assert model["size"] == len(gguf_bytes) and model["source"] == "upload"
    (entry,) = model["files"]
    assert entry["sha256"] == sha(gguf_bytes)
    assert (svc.root / entry["location"]).read_bytes() == gguf_bytes
    tree_file = svc.root / model["storage"]["tree"] / "tiny.gguf"
    assert tree_file.is_symlink() and tree_file.read_bytes() == gguf_bytes
    assert model["storage"]["fingerprint"] == (svc.root / ".eldric-fingerprint").read_text().strip()
    listed, total = svc.list_models()
    assert total == 1 and listed[0]["id"] == model["id"]


def test_versions_count_up_per_name_and_explicit_ones_conflict(svc: RegistryService, gguf_bytes: bytes,
                                                                tmp_path: Path) -> None:
    other = write_llama_gguf(tmp_path / "other.gguf", name="other").read_bytes()
    versions = [svc.upload_model(name="tiny", filename="m.gguf", stream=io.BytesIO(data))["version"]
                for data in (gguf_bytes, other)]
    named = svc.upload_model(name="tiny", filename="m.gguf", stream=io.BytesIO(gguf_bytes), version="prod")
    assert versions == ["v1", "v2"] and named["version"] == "prod"
    with pytest.raises(ConflictError):
        svc.upload_model(name="tiny", filename="m.gguf", stream=io.BytesIO(gguf_bytes), version="prod")
    assert svc.list_models(name="tiny")[1] == 3
    assert len(blobs(svc)) == 2, "the same bytes are stored once"


def test_the_same_files_again_without_a_version_are_refused_naming_the_model_that_holds_them(
        svc: RegistryService, gguf_bytes: bytes) -> None:
    """Issue 22, finding 6: uploading an identical file again silently made v2 (and v3, ...)."""
    first = svc.upload_model(name="tiny", filename="m.gguf", stream=io.BytesIO(gguf_bytes))
    with pytest.raises(ConflictError) as err:
        svc.upload_model(name="tiny", filename="m.gguf", stream=io.BytesIO(gguf_bytes))
    assert str(err.value) == (f"model tiny:v1 ({first['id']}) already holds these files (the same paths and sha256); "
                              "nothing new was stored. Give a version to register them again under another")
    assert err.value.status == 409
    _models, total = svc.list_models(name="tiny")
    assert total == 1 and svc.catalog.stale_drafts(before=float("inf")) == []  # no draft left behind either
    renamed = svc.upload_model(name="tiny", filename="other-name.gguf", stream=io.BytesIO(gguf_bytes))
    assert renamed["version"] == "v2", "another path is another model layout"
    assert svc.upload_model(name="tiny", filename="m.gguf", stream=io.BytesIO(gguf_bytes),
                            version="pinned")["version"] == "pinned"
    assert svc.upload_model(name="small", filename="m.gguf", stream=io.BytesIO(gguf_bytes))["version"] == "v1"


class _Unread(io.RawIOBase):
    """A body that must not be read."""

    def readinto(self, b) -> int:
        raise AssertionError("the body was read")


@pytest.mark.parametrize("filename, fmt, message", [
    ("m.bin", "gguf", "a gguf model needs a .gguf file"),
    ("m.gguf", "safetensors", "a safetensors model needs config.json and at least one .safetensors file"),
    ("model.safetensors", None, "a safetensors model needs config.json and at least one .safetensors file"),
    ("weights.bin", None, "cannot tell the model's format from its files; declare format (gguf, safetensors, lora, "
                          "other)"),
])
def test_a_one_file_upload_of_the_wrong_format_is_refused_before_its_body_is_read(svc: RegistryService, filename,
                                                                                 fmt, message) -> None:
    with pytest.raises(InvalidFormatError) as err:
        svc.upload_model(name="tiny", filename=filename, stream=_Unread(), length=1 << 30, fmt=fmt)
    assert str(err.value) == message and err.value.status == 422
    assert svc.list_models(name="tiny")[1] == 0 and svc.catalog.stale_drafts(before=float("inf")) == []


def test_multi_file_draft_is_invisible_until_committed(svc: RegistryService, tmp_path: Path) -> None:
    src = tmp_path / "st"
    src.mkdir()
    save_file({"w": np.zeros((16, 16), np.float16)}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"]}))
    draft = svc.create_draft(name="acme/mistral-mini")
    for name in ("model.safetensors", "config.json"):
        svc.put_file(draft["id"], name, io.BytesIO((src / name).read_bytes()))
    assert svc.list_models()[1] == 0 and svc.list_models(state="draft")[1] == 1
    model = svc.commit(draft["id"])
    assert model["format"] == "safetensors" and model["details"]["architecture"] == "MistralForCausalLM"
    assert model["details"]["parameter_count"] == 256 and svc.list_models()[1] == 1
    with pytest.raises(ConflictError):
        svc.put_file(draft["id"], "extra.txt", io.BytesIO(b"late"))


def test_training_output_needs_lineage(svc: RegistryService, gguf_bytes: bytes) -> None:
    with pytest.raises(BadRequestError, match="lineage"):
        svc.create_draft(name="ft", source="training")
    model = svc.upload_model(name="ft", filename="ft.gguf", stream=io.BytesIO(gguf_bytes), source="training",
                             lineage={"base_model": "tiny:v1", "run_id": "run-42"})
    assert model["source"] == "training" and model["lineage"] == {"base_model": "tiny:v1", "run_id": "run-42"}
    assert svc.list_models(source="training")[1] == 1 and svc.list_models(source="upload")[1] == 0


@pytest.mark.parametrize("filename, head, size, error", [
    ("bad.gguf", b"not a gguf at all", 17, InvalidFormatError),
    ("../up.gguf", b"GGUF", 4, InvalidPathError),
    ("big.gguf", b"GGUF", (4 << 20) + 1, TooLargeError),
], ids=["wrong-magic", "path", "too-large"])
def test_rejected_uploads_leave_nothing(svc: RegistryService, filename: str, head: bytes, size: int,
                                        error: type) -> None:
    data = head + b"\0" * (size - len(head))
    with pytest.raises(error):
        svc.upload_model(name="x", filename=filename, stream=io.BytesIO(data))
    assert svc.list_models()[1] == 0 and svc.list_models(state="draft")[1] == 0
    assert blobs(svc) == set()


def test_digest_mismatch_is_refused(svc: RegistryService, gguf_bytes: bytes) -> None:
    with pytest.raises(DigestMismatchError):
        svc.upload_model(name="x", filename="x.gguf", stream=io.BytesIO(gguf_bytes), digest=sha(b"other"))
    assert svc.list_models()[1] == 0 and blobs(svc) == set()
    model = svc.upload_model(name="x", filename="x.gguf", stream=io.BytesIO(gguf_bytes), digest=sha(gguf_bytes))
    assert model["files"][0]["sha256"] == sha(gguf_bytes)


def test_model_size_limit_counts_every_file(svc: RegistryService) -> None:
    draft = svc.create_draft(name="big", fmt="other")
    svc.put_file(draft["id"], "a.bin", io.BytesIO(b"a" * (3 << 20)))
    with pytest.raises(TooLargeError, match="model size limit"):
        svc.put_file(draft["id"], "b.bin", io.BytesIO(b"b" * ((3 << 20) + 1)), length=(3 << 20) + 1)


def test_shared_blob_stays_until_its_last_model_goes(svc: RegistryService, gguf_bytes: bytes) -> None:
    a = svc.upload_model(name="a", filename="m.gguf", stream=io.BytesIO(gguf_bytes))
    draft = svc.create_draft(name="b")
    svc.put_file(draft["id"], "m.gguf", io.BytesIO(b""), digest=sha(gguf_bytes), length=0)  # link, no bytes
    b = svc.commit(draft["id"])
    blob = svc.root / a["files"][0]["location"]
    svc.delete_model(a["id"])
    assert blob.read_bytes() == gguf_bytes and not (svc.root / "trees" / a["id"]).exists()
    svc.delete_model(b["id"])
    assert not blob.exists() and blobs(svc) == set()
    with pytest.raises(NotFoundError):
        svc.delete_model(b["id"])


def test_concurrent_commits_of_one_name_get_distinct_versions(svc: RegistryService, gguf_bytes: bytes) -> None:
    results: list[object] = []

    def upload(i: int) -> None:
        data = gguf_bytes + bytes([i])  # GGUF readers ignore trailing bytes; each model is distinct
        try:
            results.append((svc.upload_model(name="race", filename="m.gguf", stream=io.BytesIO(data)), data))
        except ConflictError as exc:
            results.append(exc)
    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    models = [r for r in results if isinstance(r, tuple)]
    assert len({m["version"] for m, _ in models}) == len(models) >= 1
    for model, data in models:  # never a mixed model: each holds exactly its own bytes
        assert svc.get_model(model["id"])["files"][0]["sha256"] == sha(data)


def test_upload_session_resumes_after_a_restart(svc: RegistryService, gguf_bytes: bytes, clock: Clock) -> None:
    draft = svc.create_draft(name="resumed")
    session = svc.start_upload(draft["id"], "tiny.gguf", size=len(gguf_bytes), digest=sha(gguf_bytes))
    assert svc.append_upload(session["id"], io.BytesIO(gguf_bytes[:1000]), 0)["offset"] == 1000
    with pytest.raises(RangeNotSatisfiableError) as err:
        svc.append_upload(session["id"], io.BytesIO(gguf_bytes[500:]), 500)
    assert err.value.size == 1000
    again = RegistryService(svc.root, min_free_bytes=0, clock=clock)  # a restarted registry
    assert again.upload_status(session["id"])["offset"] == 1000
    again.append_upload(session["id"], io.BytesIO(gguf_bytes[1000:]), 1000)
    entry = again.finish_upload(session["id"])
    assert entry["sha256"] == sha(gguf_bytes)
    assert again.commit(draft["id"])["files"][0]["sha256"] == sha(gguf_bytes)
    assert list((svc.root / "uploads").iterdir()) == []


def test_session_checks_size_digest_and_declared_length(svc: RegistryService, gguf_bytes: bytes) -> None:
    draft = svc.create_draft(name="checked")
    session = svc.start_upload(draft["id"], "tiny.gguf", size=len(gguf_bytes))
    svc.append_upload(session["id"], io.BytesIO(gguf_bytes[:100]), None)
    with pytest.raises(BadRequestError, match="announced"):
        svc.finish_upload(session["id"])
    with pytest.raises(TooLargeError):
        svc.append_upload(session["id"], io.BytesIO(gguf_bytes + b"extra"), 100)
    with pytest.raises(ConflictError, match="unfinished uploads"):
        svc.commit(draft["id"])
    svc.cancel_upload(session["id"])
    with pytest.raises(NotFoundError):
        svc.upload_status(session["id"])


def test_session_of_a_file_that_is_not_what_it_says_is_dropped(svc: RegistryService) -> None:
    draft = svc.create_draft(name="fake")
    session = svc.start_upload(draft["id"], "fake.gguf")
    with pytest.raises(InvalidFormatError):
        svc.append_upload(session["id"], io.BytesIO(b"MZ\x90\x00 a windows binary"), 0)
    svc.cancel_upload(session["id"])
    session = svc.start_upload(draft["id"], "fake.gguf")
    svc.append_upload(session["id"], io.BytesIO(b"GGUF" + b"\xff" * 40), 0)
    with pytest.raises(InvalidFormatError):
        svc.finish_upload(session["id"])
    with pytest.raises(NotFoundError):  # the bytes could never be part of the model, so they are gone
        svc.upload_status(session["id"])


def test_stale_drafts_expire_and_startup_cleans_leftovers(svc: RegistryService, gguf_bytes: bytes,
                                                          clock: Clock) -> None:
    draft = svc.create_draft(name="abandoned")
    svc.put_file(draft["id"], "m.gguf", io.BytesIO(gguf_bytes))
    kept = svc.upload_model(name="kept", filename="k.gguf", stream=io.BytesIO(gguf_bytes + b"k"))
    (svc.blobs.root / ".incoming-crashed.tmp").write_bytes(b"half")
    (svc.blobs.root / ("sha256-" + "0" * 64)).write_bytes(b"orphan")
    (svc.root / "uploads" / "nosuchsession.part").write_bytes(b"x")
    clock.now += svc.draft_ttl + 1
    svc.startup_cleanup()
    assert svc.list_models(state="draft")[1] == 0
    assert blobs(svc) == {kept["files"][0]["location"].split("/")[1]}
    assert list((svc.root / "uploads").iterdir()) == []


def test_unknown_ids(svc: RegistryService) -> None:
    for call in (lambda: svc.get_model("nope"), lambda: svc.commit("nope"), lambda: svc.upload_status("nope"),
                 lambda: svc.open_file("nope", "m.gguf")):
        with pytest.raises(NotFoundError):
            call()


def test_fingerprint_survives_restarts(svc: RegistryService) -> None:
    assert RegistryService(svc.root, min_free_bytes=0).fingerprint == svc.fingerprint
    assert os.stat(svc.root / ".eldric-fingerprint").st_size == 33


# A model never becomes ready with a tree it cannot serve (issue 11, item 4) -------------------------

NINE_FILES = ["a.txt", "b.txt", "c.txt", "d/e.txt", "d/f.txt", "g.txt", "h.txt", "i.txt", "ok.txt"]


def tree_files(svc: RegistryService, model_id: str) -> set[str]:
    root = svc.trees / model_id
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("first, second", [("ok.txt", "ok.txt/inner"), ("ok.txt/inner", "ok.txt"),
                                           ("d/e.txt", "d"), ("d", "d/e/f.txt")])
def test_a_path_that_is_another_files_directory_is_409_naming_both(svc: RegistryService, first: str,
                                                                    second: str) -> None:
    draft = svc.create_draft(name="clash", fmt="other")
    svc.put_file(draft["id"], first, io.BytesIO(b"first"))
    with pytest.raises(ConflictError) as err:
        svc.put_file(draft["id"], second, io.BytesIO(b"second"))
    assert repr(first) in str(err.value) and repr(second) in str(err.value) and err.value.field == "path"
    with pytest.raises(ConflictError, match="conflict"):  # through an upload session too
        svc.start_upload(draft["id"], second)
    assert [f["path"] for f in svc.get_model(draft["id"])["files"]] == [first]
    assert svc.catalog.uploads_of(draft["id"]) == []


def test_an_upload_session_conflicting_with_another_session_is_409(svc: RegistryService) -> None:
    draft = svc.create_draft(name="sessions", fmt="other")
    svc.start_upload(draft["id"], "ok.txt")
    with pytest.raises(ConflictError, match=re.escape("'ok.txt' and 'ok.txt/inner'")):
        svc.start_upload(draft["id"], "ok.txt/inner")


def test_the_draft_from_the_issue_commits_with_every_file_in_its_tree(svc: RegistryService) -> None:
    draft = svc.create_draft(name="nine", fmt="other")
    for path in NINE_FILES:
        svc.put_file(draft["id"], path, io.BytesIO(path.encode()))
    with pytest.raises(ConflictError):
        svc.put_file(draft["id"], "ok.txt/inner", io.BytesIO(b"inner"))
    model = svc.commit(draft["id"])
    assert model["state"] == "ready" and tree_files(svc, model["id"]) == set(NINE_FILES)
    for path in NINE_FILES:
        assert (svc.trees / model["id"] / path).read_bytes() == path.encode()


def test_a_draft_holding_conflicting_paths_stays_a_draft(svc: RegistryService) -> None:
    """A draft stored before paths were checked at upload time: commit refuses it, nothing half-built remains."""
    draft = svc.create_draft(name="legacy", fmt="other")
    for path in NINE_FILES:
        svc.put_file(draft["id"], path, io.BytesIO(path.encode()))
    inner = svc.get_model(draft["id"])["files"][0]
    with svc.catalog.transaction() as tx:  # as an older registry let it in
        tx.put_file(draft["id"], "ok.txt/inner", inner["sha256"], inner["size"], {}, 0)
    with pytest.raises(ConflictError, match=re.escape("'ok.txt' and 'ok.txt/inner' conflict")):
        svc.commit(draft["id"])
    assert svc.get_model(draft["id"])["state"] == "draft" and svc.list_models()[1] == 0
    assert not svc.trees.exists() or list(svc.trees.iterdir()) == []


@pytest.mark.parametrize("damage", ["missing", "truncated", "directory"])
def test_commit_checks_the_tree_holds_every_file(svc: RegistryService, damage: str) -> None:
    draft = svc.create_draft(name="damaged", fmt="other")
    svc.put_file(draft["id"], "keep.bin", io.BytesIO(b"kept bytes"))
    entry = svc.put_file(draft["id"], "lost.bin", io.BytesIO(b"these bytes go missing"))
    blob = svc.root / entry["location"]
    if damage == "missing":
        blob.unlink()
    elif damage == "truncated":
        blob.write_bytes(b"short")
    else:
        blob.unlink()
        blob.mkdir()
    with pytest.raises(ConflictError, match=r"lost\.bin.*stays a draft"):
        svc.commit(draft["id"])
    assert svc.get_model(draft["id"])["state"] == "draft" and svc.list_models()[1] == 0
    assert list(svc.trees.iterdir()) == []  # neither trees/<id> nor a staging directory


def test_startup_removes_a_staging_tree_left_by_a_crash(svc: RegistryService, gguf_bytes: bytes) -> None:
    model = svc.upload_model(name="t", filename="t.gguf", stream=io.BytesIO(gguf_bytes))
    (svc.trees / f".staging-{'0' * 32}-deadbeef" / "x").mkdir(parents=True)
    svc.startup_cleanup()
    assert [p.name for p in svc.trees.iterdir()] == [model["id"]]
