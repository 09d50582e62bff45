"""RegistryService without HTTP: drafts, commit, dedupe, delete, sessions, limits, housekeeping."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from eldric.core.errors import DigestMismatchError
from eldric.core.model_errors import (BadRequestError, ConflictError, InvalidFormatError, InvalidPathError,
                                   NotFoundError, RangeNotSatisfiableError, TooLargeError)
from registry.service import RegistryService
from tests.support.gguf_models import write_llama_gguf


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


def test_versions_count_up_per_name_and_explicit_ones_conflict(svc: RegistryService, gguf_bytes: bytes) -> None:
    versions = [svc.upload_model(name="tiny", filename="m.gguf", stream=io.BytesIO(gguf_bytes))["version"]
                for _ in range(2)]
    named = svc.upload_model(name="tiny", filename="m.gguf", stream=io.BytesIO(gguf_bytes), version="prod")
    assert versions == ["v1", "v2"] and named["version"] == "prod"
    with pytest.raises(ConflictError):
        svc.upload_model(name="tiny", filename="m.gguf", stream=io.BytesIO(gguf_bytes), version="prod")
    assert svc.list_models(name="tiny")[1] == 3
    assert len(blobs(svc)) == 1, "the same bytes are stored once"


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
