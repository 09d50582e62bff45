"""Format checks and header facts: GGUF (gguf writer), safetensors (safetensors.numpy), LoRA adapters."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from eldric.core.formats import check_head, detect_format, inspect_file, model_details
from eldric.core.ggufheader import read_header
from eldric.core.request_errors import InvalidFormatError
from testbed.gguf_models import DEFAULT_CHAT_TEMPLATE, write_llama_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", n_layers=3, context_length=4096)


def test_gguf_facts_from_the_header(tiny_gguf: Path) -> None:
    info = inspect_file("tiny.gguf", tiny_gguf)
    reader = gguf.GGUFReader(tiny_gguf)
    assert info["architecture"] == "llama" and info["name"] == "tiny"
    assert info["context_length"] == 4096
    assert info["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert info["file_type"] == "F16" and info["quantization"] == "F16"
    assert info["parameter_count"] == sum(int(t.n_elements) for t in reader.tensors)
    assert info["tensor_count"] == len(reader.tensors) == 3 + 3 * 9
    assert info["vocab_size"] == len(reader.fields["tokenizer.ggml.tokens"].data)


def test_lean_header_reader_agrees_with_gguf_reader(tiny_gguf: Path) -> None:
    header = read_header(tiny_gguf)
    reader = gguf.GGUFReader(tiny_gguf)
    assert header.data_offset == reader.data_offset
    assert header.data_end == max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    for key in ("llama.block_count", "llama.embedding_length", "general.file_type", "llama.rope.dimension_count"):
        assert header.metadata[key] == reader.fields[key].contents(), key
    assert header.array_lengths["tokenizer.ggml.scores"] == len(reader.fields["tokenizer.ggml.scores"].data)


def test_f32_file_type(tmp_path: Path) -> None:
    path = write_llama_gguf(tmp_path / "f32.gguf", file_type=0, chat_template=None)
    info = inspect_file("f32.gguf", path)
    assert info["file_type"] == "F32" and info["chat_template"] is None


def test_truncated_gguf_is_refused(tiny_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-1000])
    with pytest.raises(InvalidFormatError, match="truncated"):
        inspect_file("cut.gguf", cut)
    cut.write_bytes(tiny_gguf.read_bytes()[:300])  # ends inside the metadata
    with pytest.raises(InvalidFormatError, match="truncated"):
        inspect_file("cut.gguf", cut)


@pytest.mark.parametrize("data, why", [
    (b"GGML" + b"\0" * 100, "magic"),
    (b"GGUF" + struct.pack("<I", 9) + b"\0" * 16, "version 9"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40), "implausible"),
])
def test_broken_gguf_headers(tmp_path: Path, data: bytes, why: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data)
    with pytest.raises(InvalidFormatError, match=why) as err:
        inspect_file("bad.gguf", bad)
    assert err.value.status == 422


@pytest.mark.parametrize("name, head, ok", [
    ("m.gguf", b"GGUF\x03\0\0\0", True),
    ("m.gguf", b"PK\x03\x04zipfile", False),
    ("dir/M.GGUF", b"<html>", False),
    ("w.safetensors", struct.pack("<Q", 10) + b"{", True),
    ("w.safetensors", struct.pack("<Q", 1 << 40) + b"{", False),
    ("w.safetensors", struct.pack("<Q", 10) + b"[", False),
    ("w.safetensors", b"short", False),
    ("config.json", b"anything", True),
])
def test_check_head_rejects_on_the_first_bytes(name: str, head: bytes, ok: bool) -> None:
    if ok:
        check_head(name, head)
    else:
        with pytest.raises(InvalidFormatError):
            check_head(name, head)


def _safetensors_model(root: Path, *, with_config: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    save_file({"model.embed.weight": np.zeros((32, 8), np.float16), "model.norm.weight": np.ones(8, np.float16)},
              str(root / "model-00001-of-00002.safetensors"))
    save_file({"lm_head.weight": np.zeros((32, 8), np.float16), "step": np.zeros(1, np.int64)},
              str(root / "model-00002-of-00002.safetensors"))
    if with_config:
        (root / "config.json").write_text(json.dumps({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 8192,
            "torch_dtype": "float16", "hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 32}))
    (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (root / "tokenizer.json").write_text("{}")
    return root


def _infos(root: Path) -> dict[str, dict]:
    return {p.relative_to(root).as_posix(): inspect_file(p.relative_to(root).as_posix(), p)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_safetensors_model_details(tmp_path: Path) -> None:
    infos = _infos(_safetensors_model(tmp_path / "st"))
    shard = infos["model-00001-of-00002.safetensors"]
    assert shard == {"kind": "safetensors", "parameter_count": 32 * 8 + 8, "tensor_count": 2, "dtypes": {"F16": 264}}
    assert detect_format(list(infos), None) == "safetensors"
    details = model_details("safetensors", infos)
    assert details["architecture"] == "LlamaForCausalLM" and details["context_length"] == 8192
    assert details["parameter_count"] == 264 + 256 + 1
    assert details["dtype"] == "F16" and details["dtypes"] == {"F16": 520, "I64": 1}
    assert details["chat_template"] == "{{ messages }}"
    assert details["tokenizer_files"] == ["tokenizer.json", "tokenizer_config.json"]
    assert len(details["weight_files"]) == 2


def test_lora_adapter_records_its_base_model(tmp_path: Path) -> None:
    root = tmp_path / "lora"
    root.mkdir()
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((4, 64), np.float32),
               "base_model.model.layers.0.q_proj.lora_B.weight": np.zeros((64, 4), np.float32)},
              str(root / "adapter_model.safetensors"))
    (root / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": "meta-llama/Llama-3.1-8B", "peft_type": "LORA", "r": 4, "lora_alpha": 8,
        "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}))
    infos = _infos(root)
    assert detect_format(list(infos), None) == "lora"
    details = model_details("lora", infos)
    assert details["base_model"] == "meta-llama/Llama-3.1-8B" and details["rank"] == 4
    assert details["parameter_count"] == 512 and details["dtype"] == "F32"


def _raw_safetensors(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize("header, data, length, why", [
    (b"{not json", b"", None, "not valid JSON"),
    ([1, 2], b"", None, "not a JSON object"),
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "outside"),
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, None, "cover"),
    ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "8 bytes for 3 x F32"),
    ({"t": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8, None, "malformed"),
    ({}, b"", 1 << 30, "does not fit"),
])
def test_unparsable_safetensors_headers(tmp_path: Path, header, data: bytes, length, why: str) -> None:
    path = _raw_safetensors(tmp_path / "w.safetensors", header, data, length)
    with pytest.raises(InvalidFormatError, match=why):
        inspect_file("w.safetensors", path)


def test_metadata_entry_is_ignored(tmp_path: Path) -> None:
    header = {"__metadata__": {"format": "pt"}, "t": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}
    info = inspect_file("w.safetensors", _raw_safetensors(tmp_path / "w.safetensors", header, b"\0" * 8))
    assert info["dtypes"] == {"BF16": 4}


def test_config_json_must_be_an_object(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(InvalidFormatError, match=r"config\.json: not a JSON object"):
        inspect_file("config.json", tmp_path / "config.json")


@pytest.mark.parametrize("paths, declared, expected", [
    (["m.gguf"], None, "gguf"),
    (["a/m-00001-of-00002.gguf", "a/m-00002-of-00002.gguf"], None, "gguf"),
    (["m.gguf", "README.md"], "gguf", "gguf"),
    (["config.json", "model.safetensors"], None, "safetensors"),
    (["adapter_config.json", "adapter_model.bin"], None, "lora"),
    (["weights.bin"], "other", "other"),
])
def test_detect_format(paths: list[str], declared: str | None, expected: str) -> None:
    assert detect_format(paths, declared) == expected


@pytest.mark.parametrize("paths, declared, why", [
    (["README.md"], None, "cannot tell"),
    (["model.safetensors"], None, "config.json"),
    (["config.json", "model.safetensors"], "gguf", "needs a .gguf"),
    (["adapter_config.json"], "lora", "adapter weights"),
])
def test_missing_required_files(paths: list[str], declared: str | None, why: str) -> None:
    with pytest.raises(InvalidFormatError, match=why):
        detect_format(paths, declared)


def test_gguf_details_prefer_the_model_over_a_projector(tiny_gguf: Path, tmp_path: Path) -> None:
    proj = write_llama_gguf(tmp_path / "mmproj.gguf", name="proj", n_layers=1)
    infos = {"mmproj-model.gguf": inspect_file("mmproj-model.gguf", proj), "tiny.gguf": inspect_file("tiny.gguf", tiny_gguf)}
    details = model_details("gguf", infos)
    assert details["model_file"] == "tiny.gguf" and details["name"] == "tiny"
    assert details["parameter_count"] == infos["tiny.gguf"]["parameter_count"]
