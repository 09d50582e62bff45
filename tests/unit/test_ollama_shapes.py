"""/api/tags and /api/show in Ollama's shapes, complete whatever a worker left out (controller/ollama_shapes.py),
and what an agent's show answer holds (worker_agent/model_info.py, eldric/core/capabilities.py)."""

from __future__ import annotations

from datetime import datetime

import pytest

from controller.ollama_shapes import model_details, rfc3339, show_answer, tag_entry
from eldric.core.capabilities import derive_capabilities
from testbed.gguf_models import write_llama_gguf
from worker_agent.model_info import gguf_model_info, parameters_text

DETAIL_STRINGS = ("parent_model", "format", "family", "parameter_size", "quantization_level")


@pytest.mark.parametrize("details", [
    {},  # an inventory record with no details at all
    {"format": "gguf", "family": "llama", "families": None, "parameter_size": "", "quantization_level": None},
    {"architecture": "qwen2", "parameter_count": 494_000_000, "quantization": "Q4_K_M"},  # a file model's facts
])
def test_details_have_every_key_a_string_and_families_a_list(details):
    # Enchanted / OllamaKit decodes these non-optional: one null breaks the whole list.
    out = model_details(details, "gguf")
    assert all(isinstance(out[k], str) for k in DETAIL_STRINGS), out
    assert isinstance(out["families"], list) and all(isinstance(f, str) for f in out["families"])


def test_file_model_facts_become_ollama_details():
    out = model_details({"architecture": "qwen2", "parameter_count": 494_000_000, "quantization": "Q4_K_M"})
    assert out["family"] == "qwen2" and out["families"] == ["qwen2"]
    assert out["parameter_size"] == "494M"
    assert out["quantization_level"] == "Q4_K_M"


@pytest.mark.parametrize("value", [0, 1765152000, 1765152000.25, "2026-12-08T00:00:00+00:00", "2026-12-08T00:00:00"])
def test_times_are_rfc3339_with_fractional_seconds(value):
    text = rfc3339(value)
    assert text.endswith("Z") and "." in text.split("T")[1], text  # Swift's fractional-seconds formatter needs both
    assert datetime.fromisoformat(text).utcoffset().total_seconds() == 0


def test_tag_entry_is_ollamas_list_model():
    entry = tag_entry({"name": "tiny:latest", "size": 123, "digest": "sha256:" + "a" * 64, "modified_at": 1.5,
                       "format": "gguf", "details": {"family": "llama"}})
    assert entry["name"] == entry["model"] == "tiny:latest"
    assert entry["digest"] == "a" * 64 and entry["size"] == 123
    assert entry["details"]["format"] == "gguf" and entry["details"]["families"] == ["llama"]
    assert entry["details"]["status"] == "served"
    assert tag_entry({"name": "x"})["details"]["format"] == ""  # never null


def test_show_answer_always_has_model_info_capabilities_and_strings():
    # An older agent's answer (no capabilities, no model_info, a null template): completed, not passed on.
    out = show_answer({"details": {"family": "llama"}, "template": None, "modified_at": 0})
    assert out["model_info"] == {"general.architecture": "llama"}
    assert out["capabilities"] == ["completion"]
    assert all(isinstance(out[k], str) for k in ("modelfile", "parameters", "template", "system", "license"))
    assert out["modified_at"] == "1970-01-01T00:00:00.000000Z"
    given = show_answer({"capabilities": ["embedding"], "model_info": {"bert.context_length": 512}})
    assert given["capabilities"] == ["embedding"] and given["model_info"]["bert.context_length"] == 512


@pytest.mark.parametrize("template, info, families, projector, expected", [
    ("{{ .Prompt }}", {"general.architecture": "llama"}, [], False, ["completion"]),
    ("", {"general.architecture": "nomic-bert"}, [], False, ["embedding"]),
    ("", {"general.architecture": "qwen3", "qwen3.pooling_type": 1}, [], False, ["embedding"]),
    ("{{ .Prompt }}", {"general.architecture": "llama"}, ["llama", "clip"], False, ["completion", "vision"]),
    ("{{ .Prompt }}", {"general.architecture": "mllama"}, [], True, ["completion", "vision"]),
    ("{{ .Prompt }}", {"general.architecture": "gemma3", "gemma3.vision.block_count": 27}, [], False,
     ["completion", "vision"]),
    ("{{- if .Tools }}{{ .Tools }}{{ end }}{{ .Prompt }}", {"general.architecture": "qwen2"}, [], False,
     ["completion", "tools"]),
    ("<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>", {"general.architecture": "llama"}, [], False,
     ["completion", "insert"]),
    ("{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}", {"general.architecture": "qwen3"}, [], False,
     ["completion", "thinking"]),
    ("{{ .Prompt }}", {"general.architecture": "gptoss"}, [], False, ["completion", "thinking"]),
])
def test_capabilities_as_ollama_derives_them(template, info, families, projector, expected):
    assert derive_capabilities(template, info, families, has_projector=projector) == expected


def test_model_info_is_the_gguf_header_with_ollamas_keys(tmp_path):
    info = gguf_model_info(write_llama_gguf(tmp_path / "m.gguf", name="m"))
    assert info["general.architecture"] == "llama"
    assert isinstance(info["llama.context_length"], int)  # AnythingLLM reads the key ending in .context_length
    assert info["general.parameter_count"] > 0
    assert info["tokenizer.ggml.tokens"] == []  # arrays as Ollama gives them without `verbose`


def test_parameters_text_is_what_continue_parses():
    text = parameters_text({"num_ctx": 4096, "stop": ["<|im_end|>", "<|endoftext|>"]})
    lines = [line.split(None, 1) for line in text.splitlines()]
    assert lines == [["num_ctx", "4096"], ["stop", '"<|im_end|>"'], ["stop", '"<|endoftext|>"']]
