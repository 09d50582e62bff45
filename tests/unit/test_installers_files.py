"""File-copy installs (vLLM, TGI, llama.cpp) and their staging: atomic, idempotent, shared-path aware."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from eldric.core.errors import DigestMismatchError
from testbed.gguf_models import write_llama_gguf
from worker_agent.installers import (BackendConfig, InvalidModelError, LocalModel, MissingFilesError,
                                     UnsupportedModelError, install, model_slug, uninstall)
from worker_agent.installers import staging
from worker_agent.installers.staging import FileSpec, place_dir, place_file


def write_safetensors_model(root: Path, *, tokenizer: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    save_file({"embed.weight": np.arange(64, dtype=np.float32).reshape(8, 8)}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    if tokenizer:
        (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
        (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return root


def config(backend: str, tmp_path: Path) -> BackendConfig:
    return BackendConfig(backend, models_dir=tmp_path / backend)


def tree(root: Path) -> dict[str, bytes | str]:
    """Everything under root: file bytes, or a symlink's target."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


@pytest.fixture
def st_model(tmp_path) -> LocalModel:
    return LocalModel.from_path("acme/tiny-st", write_safetensors_model(tmp_path / "src" / "st"))


@pytest.fixture
def gguf_model(tmp_path) -> LocalModel:
    (tmp_path / "src").mkdir(exist_ok=True)
    return LocalModel.from_path("tiny:q8", write_llama_gguf(tmp_path / "src" / "tiny.gguf"))


# ---------------------------------------------------------------- LocalModel

def test_local_model_reads_format_and_gguf_metadata(gguf_model):
    assert gguf_model.format == "gguf" and gguf_model.architecture == "llama"
    assert "<|im_start|>" in gguf_model.chat_template
    assert gguf_model.slug == "tiny--q8"


def test_a_blob_named_file_is_known_by_its_name(tmp_path, gguf_model):
    digest = gguf_model.digest("tiny.gguf")
    blob = tmp_path / "blobs" / f"sha256-{digest.split(':')[1]}"
    blob.parent.mkdir()
    blob.write_bytes(gguf_model.files["tiny.gguf"].read_bytes())
    model = LocalModel.from_files("tiny", {"tiny.gguf": blob})
    assert model.digests == {"tiny.gguf": digest}


@pytest.mark.parametrize("name,slug", [("tiny", "tiny"), ("qwen2.5:0.5b", "qwen2.5--0.5b"),
                                       ("acme/llama-3-8b", "acme--llama-3-8b"),
                                       ("mirror:5000/lib/m:v1", "mirror_5000--lib--m--v1")])
def test_model_slug(name, slug):
    assert model_slug(name) == slug


@pytest.mark.parametrize("rel", ["../evil.gguf", "/abs.gguf", "a\\b.gguf", "a/./b.gguf"])
def test_unsafe_file_paths_are_refused(tmp_path, gguf_model, rel):
    with pytest.raises(InvalidModelError):
        LocalModel.from_files("tiny", {rel: gguf_model.files["tiny.gguf"]})


@pytest.mark.parametrize("name", ["../x", "a/b/c/d", "", "x\x00y"])
def test_bad_model_names_are_refused(tmp_path, gguf_model, name):
    with pytest.raises(InvalidModelError):
        LocalModel.from_files(name, {"tiny.gguf": gguf_model.files["tiny.gguf"]})


def test_a_file_named_gguf_that_is_not_one_is_refused(tmp_path):
    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip file" + bytes(100))
    with pytest.raises(InvalidModelError, match="GGUF"):
        LocalModel.from_path("fake", bad)


# ---------------------------------------------------------------- vLLM

def test_vllm_installs_a_safetensors_directory_and_a_rerun_changes_nothing(tmp_path, st_model):
    cfg = config("vllm", tmp_path)
    first = install(st_model, cfg)
    dest = tmp_path / "vllm" / "acme--tiny-st"
    assert first.changed and first.location == str(dest) and first.bytes_copied > 0
    assert {k: v for k, v in tree(dest).items() if not k.startswith(".")} == \
        {rel: p.read_bytes() for rel, p in st_model.files.items()}
    stat_before = {p: p.stat().st_mtime_ns for p in dest.iterdir()}
    second = install(st_model, cfg)
    assert (second.changed, second.bytes_copied) == (False, 0)
    assert {p: p.stat().st_mtime_ns for p in dest.iterdir()} == stat_before
    assert sorted(os.listdir(tmp_path / "vllm")) == ["acme--tiny-st"]  # no staging left behind


def test_vllm_rerun_does_not_read_model_bytes_when_the_record_matches(tmp_path, st_model, monkeypatch):
    cfg = config("vllm", tmp_path)
    install(st_model, cfg)
    monkeypatch.setattr(staging, "sha256_file", lambda p: pytest.fail(f"hashed {p}"))
    assert install(st_model, cfg).changed is False


def test_a_hand_edited_install_is_repaired(tmp_path, st_model):
    cfg = config("vllm", tmp_path)
    install(st_model, cfg)
    weights = tmp_path / "vllm" / "acme--tiny-st" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    again = install(st_model, cfg)
    assert again.changed
    assert weights.read_bytes() == st_model.files["model.safetensors"].read_bytes()


def test_an_extra_file_in_the_install_is_removed(tmp_path, st_model):
    cfg = config("vllm", tmp_path)
    install(st_model, cfg)
    (tmp_path / "vllm" / "acme--tiny-st" / "stray.bin").write_bytes(b"x")
    assert install(st_model, cfg).changed
    assert not (tmp_path / "vllm" / "acme--tiny-st" / "stray.bin").exists()


def test_vllm_installs_gguf_into_a_model_directory(tmp_path, gguf_model):
    result = install(gguf_model, config("vllm", tmp_path))
    assert (tmp_path / "vllm" / "tiny--q8" / "tiny.gguf").read_bytes()[:4] == b"GGUF"
    assert result.details["serve"] == f"vllm serve {tmp_path / 'vllm' / 'tiny--q8' / 'tiny.gguf'}"


def test_shared_path_links_instead_of_copying(tmp_path, st_model):
    shared = write_safetensors_model(tmp_path / "nfs" / "acme" / "tiny-st")
    result = install(st_model, config("vllm", tmp_path), shared_path=shared)
    dest = tmp_path / "vllm" / "acme--tiny-st"
    assert (result.shared, result.bytes_copied) == (True, 0)
    for rel in st_model.files:
        assert (dest / rel).is_symlink() and Path(os.readlink(dest / rel)) == shared / rel
    assert install(st_model, config("vllm", tmp_path), shared_path=shared).changed is False
    copied = install(st_model, config("vllm", tmp_path))  # no longer shared: real copies replace the links
    assert copied.changed and not any((dest / rel).is_symlink() for rel in st_model.files)


def test_shared_path_lacking_a_file_is_refused(tmp_path, st_model):
    shared = write_safetensors_model(tmp_path / "nfs" / "m", tokenizer=False)
    with pytest.raises(MissingFilesError, match=r"tokenizer\.json"):
        install(st_model, config("vllm", tmp_path), shared_path=shared)
    assert not (tmp_path / "vllm" / "acme--tiny-st").exists()


def test_uninstall_removes_the_directory(tmp_path, st_model):
    cfg = config("vllm", tmp_path)
    install(st_model, cfg)
    assert uninstall("acme/tiny-st", cfg) is True
    assert not (tmp_path / "vllm" / "acme--tiny-st").exists()
    assert uninstall("acme/tiny-st", cfg) is False


# ---------------------------------------------------------------- TGI

def test_tgi_refuses_a_model_without_tokenizer_files(tmp_path):
    model = LocalModel.from_path("acme/no-tok", write_safetensors_model(tmp_path / "src", tokenizer=False))
    with pytest.raises(MissingFilesError) as err:
        install(model, config("tgi", tmp_path))
    assert "tokenizer.json or tokenizer.model or vocab.json + merges.txt" in str(err.value)
    assert "config.json, model.safetensors" in str(err.value)
    assert not (tmp_path / "tgi").exists()


def test_tgi_accepts_a_sentencepiece_tokenizer(tmp_path):
    src = write_safetensors_model(tmp_path / "src", tokenizer=False)
    (src / "tokenizer.model").write_bytes(b"\x0a\x0bsentencepiece")
    result = install(LocalModel.from_path("acme/sp", src), config("tgi", tmp_path))
    assert (tmp_path / "tgi" / "acme--sp" / "tokenizer.model").is_file()
    assert result.details["serve"] == f"--model-id {tmp_path / 'tgi' / 'acme--sp'}"


def test_tgi_refuses_gguf(tmp_path, gguf_model):
    with pytest.raises(UnsupportedModelError, match="safetensors"):
        install(gguf_model, config("tgi", tmp_path))


# ---------------------------------------------------------------- llama.cpp

def test_llamacpp_places_one_gguf_file_and_is_idempotent(tmp_path, gguf_model):
    cfg = config("llamacpp", tmp_path)
    first = install(gguf_model, cfg)
    dest = tmp_path / "llamacpp" / "tiny--q8.gguf"
    assert first.location == str(dest) and dest.read_bytes() == gguf_model.files["tiny.gguf"].read_bytes()
    assert first.details["gguf_version"] == 3
    mtime = dest.stat().st_mtime_ns
    assert install(gguf_model, cfg).changed is False and dest.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path / "llamacpp")) == [".eldric-installs", "tiny--q8.gguf"]


def test_llamacpp_refuses_a_file_that_is_not_gguf(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGML" + bytes(64))
    model = LocalModel(name="bogus", format="gguf", files={"bogus.gguf": bogus})
    with pytest.raises(InvalidModelError, match=r"llama\.cpp cannot load it: .*magic"):
        install(model, config("llamacpp", tmp_path))
    assert not (tmp_path / "llamacpp").exists()


def test_llamacpp_refuses_an_unsupported_gguf_version(tmp_path, gguf_model):
    data = bytearray(gguf_model.files["tiny.gguf"].read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    future = tmp_path / "future.gguf"
    future.write_bytes(bytes(data))
    model = LocalModel(name="future", format="gguf", files={"future.gguf": future})
    with pytest.raises(InvalidModelError, match="version 99"):
        install(model, config("llamacpp", tmp_path))


def test_llamacpp_refuses_a_truncated_gguf(tmp_path, gguf_model):
    short = tmp_path / "short.gguf"
    short.write_bytes(gguf_model.files["tiny.gguf"].read_bytes()[:-1000])
    model = LocalModel(name="short", format="gguf", files={"short.gguf": short})
    with pytest.raises(InvalidModelError, match="truncated"):
        install(model, config("llamacpp", tmp_path))


def test_llamacpp_refuses_safetensors(tmp_path, st_model):
    with pytest.raises(UnsupportedModelError, match="GGUF"):
        install(st_model, config("llamacpp", tmp_path))


def test_llamacpp_keeps_a_projector_beside_the_model(tmp_path, gguf_model):
    proj = write_llama_gguf(tmp_path / "src" / "mmproj-tiny.gguf", name="proj")
    model = LocalModel.from_files("vision", {"tiny.gguf": gguf_model.files["tiny.gguf"], "mmproj-tiny.gguf": proj})
    result = install(model, config("llamacpp", tmp_path))
    assert sorted(os.listdir(tmp_path / "llamacpp" / "vision")) == [".eldric-install.json", "mmproj-tiny.gguf",
                                                                   "tiny.gguf"]
    assert result.details["serve"] == f"llama-server -m {tmp_path / 'llamacpp' / 'vision' / 'tiny.gguf'}"


def test_llamacpp_uninstall(tmp_path, gguf_model):
    cfg = config("llamacpp", tmp_path)
    install(gguf_model, cfg)
    assert uninstall("tiny:q8", cfg) is True
    assert not (tmp_path / "llamacpp" / "tiny--q8.gguf").exists()
    assert uninstall("tiny:q8", cfg) is False


# ---------------------------------------------------------------- atomicity

def test_a_failure_mid_install_leaves_nothing_visible(tmp_path, st_model, monkeypatch):
    real_stage, calls = staging._stage, []

    def stage_then_fail(staged, spec):
        calls.append(staged)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_stage(staged, spec)

    monkeypatch.setattr(staging, "_stage", stage_then_fail)
    with pytest.raises(OSError, match="disk full"):
        install(st_model, config("vllm", tmp_path))
    assert os.listdir(tmp_path / "vllm") == []  # neither the model nor its staging directory


def test_a_failed_reinstall_keeps_the_previous_install_whole(tmp_path, st_model, monkeypatch):
    cfg = config("vllm", tmp_path)
    install(st_model, cfg)
    dest = tmp_path / "vllm" / "acme--tiny-st"
    before = tree(dest)
    st_model.files["model.safetensors"].write_bytes(b"\0" * 8)  # the source changed...
    changed = st_model.replace(digests={})
    monkeypatch.setattr(staging.os, "rename", _fail_on_swap(staging.os.rename))
    with pytest.raises(OSError, match="swap failed"):
        install(changed, cfg)  # ...and swapping the new copy in fails
    assert tree(dest) == before
    assert os.listdir(tmp_path / "vllm") == ["acme--tiny-st"]


def _fail_on_swap(real_rename):
    def rename(src, dst):
        if Path(src).name == "new":
            raise OSError("swap failed")
        return real_rename(src, dst)
    return rename


def test_a_source_that_does_not_match_its_digest_is_not_installed(tmp_path, st_model):
    lying = st_model.replace(digests={**{rel: st_model.digest(rel) for rel in st_model.files},
                                      "model.safetensors": "sha256:" + "0" * 64})
    with pytest.raises(DigestMismatchError):
        install(lying, config("vllm", tmp_path))
    assert os.listdir(tmp_path / "vllm") == []


def test_a_directory_entry_is_swapped_whole(tmp_path):
    dest = tmp_path / "models" / "m"
    a = place_dir(dest, {"x.txt": FileSpec(data=b"one"), "sub/y.txt": FileSpec(data=b"two")})
    a.commit()
    b = place_dir(dest, {"x.txt": FileSpec(data=b"three")})
    b.commit()
    assert {k: v for k, v in tree(dest).items() if not k.startswith(".")} == {"x.txt": b"three"}
    b.rollback()  # nothing to roll back after commit
    assert (dest / "x.txt").read_bytes() == b"three"


def test_rollback_restores_the_previous_directory(tmp_path):
    dest = tmp_path / "models" / "m"
    place_dir(dest, {"x.txt": FileSpec(data=b"old")}).commit()
    newer = place_dir(dest, {"x.txt": FileSpec(data=b"new")})
    assert (dest / "x.txt").read_bytes() == b"new"
    newer.rollback()
    assert (dest / "x.txt").read_bytes() == b"old"
    assert os.listdir(tmp_path / "models") == ["m"]


def test_rollback_restores_the_previous_file(tmp_path):
    dest = tmp_path / "models" / "m.gguf"
    place_file(dest, FileSpec(data=b"old")).commit()
    newer = place_file(dest, FileSpec(data=b"new"))
    newer.rollback()
    assert dest.read_bytes() == b"old"
    assert place_file(dest, FileSpec(data=b"old")).changed is False  # the record was put back too
    assert sorted(os.listdir(tmp_path / "models")) == [".eldric-installs", "m.gguf"]


@pytest.mark.parametrize("backend", ["vllm", "tgi", "llamacpp"])
def test_install_refuses_unsafe_paths_even_in_a_hand_built_model(tmp_path, gguf_model, backend):
    model = LocalModel(name="evil", format="gguf", files={"../../escape.gguf": gguf_model.files["tiny.gguf"]})
    with pytest.raises(InvalidModelError, match=r"'\.\.'"):
        install(model, config(backend, tmp_path))
    assert not (tmp_path / "escape.gguf").exists()


# ---------------------------------------------------------------- one copy per node

def gguf_file(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    return write_llama_gguf(tmp_path / "src" / "tiny.gguf")


def blob_store_model(tmp_path: Path, name: str, source) -> LocalModel:
    """The model as the agent installs it: every file a content-addressed blob of the store."""
    import hashlib
    blobs = tmp_path / "store" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    files, digests = {}, {}
    for path in [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file()):
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        blob = blobs / digest.replace(":", "-")
        blob.write_bytes(path.read_bytes())
        rel = path.relative_to(source).as_posix() if source.is_dir() else path.name
        files[rel], digests[rel] = blob, digest
    return LocalModel.from_files(name, files, digests=digests)


def test_llamacpp_and_vllm_share_one_inode_with_the_blob_store(tmp_path):
    model = blob_store_model(tmp_path, "tiny:q8", gguf_file(tmp_path))
    [blob] = model.files.values()
    results = {b: install(model, config(b, tmp_path)) for b in ("llamacpp", "vllm")}
    placed = [p for p in (tmp_path / "llamacpp").rglob("*.gguf")] + [p for p in (tmp_path / "vllm").rglob("*.gguf")]
    assert len(placed) == 2
    assert {p.stat().st_ino for p in placed} == {blob.stat().st_ino}
    assert blob.stat().st_nlink == 3, "blob store + llama.cpp + vLLM: one copy on disk"
    assert all(r.bytes_copied == 0 and r.files_linked == 1 for r in results.values())

    # Removing the model from one backend never breaks the other or the store.
    assert uninstall("tiny:q8", config("llamacpp", tmp_path))
    vllm_file = next((tmp_path / "vllm").rglob("*.gguf"))
    assert vllm_file.read_bytes() == blob.read_bytes() and blob.stat().st_nlink == 2
    # A re-run finds everything in place and copies nothing.
    again = install(model, config("vllm", tmp_path))
    assert (again.changed, again.bytes_copied) == (False, 0)


def test_a_source_that_is_not_content_addressed_is_copied_and_hashed(tmp_path, gguf_model):
    result = install(gguf_model, config("llamacpp", tmp_path))
    [placed] = (tmp_path / "llamacpp").rglob("*.gguf")
    [source] = gguf_model.files.values()
    assert placed.stat().st_ino != source.stat().st_ino
    assert result.bytes_copied == source.stat().st_size and result.files_linked == 0


def test_another_filesystem_falls_back_to_a_verified_copy(tmp_path, monkeypatch):
    model = blob_store_model(tmp_path, "tiny:q8", gguf_file(tmp_path))

    def cross_device(src, dst, **_kw):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(staging.os, "link", cross_device)
    result = install(model, config("llamacpp", tmp_path))
    assert result.files_linked == 0 and result.bytes_copied == next(iter(model.files.values())).stat().st_size
    assert result.copy_reason == "other filesystem"


def test_the_progress_says_how_each_backend_got_its_files():
    from worker_agent.installing import placement_summary
    text = placement_summary({
        "llamacpp": {"changed": True, "files_linked": 1, "bytes_copied": 0},
        "vllm": {"changed": True, "files_linked": 0, "bytes_copied": 3 << 30, "copy_reason": "other filesystem"},
        "tgi": {"changed": False},
        "triton": {"changed": True, "shared": True},
        "ollama": {"changed": True, "bytes_copied": 1 << 29, "copy_reason": "uploaded through Ollama's API"},
    }, {"sglang": "no installer"}, order=("ollama", "llamacpp", "vllm", "tgi", "triton"))
    assert text == ("installed for ollama: copied 0.50 GiB (uploaded through Ollama's API), llamacpp: hard-linked, "
                    "no copy, vllm: copied 3.00 GiB (other filesystem), tgi: already in place, triton: shared storage, "
                    "sglang: skipped (no installer)")
