"""Model file formats: check a file is what its name says and read the facts from its header.

- GGUF (`*.gguf`): magic `GGUF`; architecture, parameter count, file type
  (quantization), context length and chat template, read with the `gguf` package.
- safetensors (`*.safetensors`): an 8-byte little-endian header length N, then N
  bytes of JSON mapping tensor names to {dtype, shape, data_offsets} (the format's
  documented layout, https://huggingface.co/docs/safetensors); dtypes and
  parameter count come from there, the architecture from `config.json`.
- LoRA adapter: `adapter_config.json` (base model, rank, targets) + adapter weights.

Every check raises InvalidFormatError with the reason, which the API answers as 422.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from pathlib import Path

from gguf import LlamaFileType

from eldric.core.ggufheader import GGUFHeaderError, read_header
from eldric.core.request_errors import InvalidFormatError

FORMATS = ("gguf", "safetensors", "lora", "other")
HEAD_BYTES = 16  # enough to reject a wrong file on its first bytes, before storing 20 GiB of it
GGUF_MAGIC = b"GGUF"
MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit
MAX_JSON_BYTES = 64 << 20
_JSON_KINDS = {"config.json": "config", "adapter_config.json": "adapter_config",
               "tokenizer_config.json": "tokenizer_config", "generation_config.json": "generation_config"}
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json")


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def check_head(path: str, head: bytes) -> None:
    """Reject a file on its first HEAD_BYTES bytes (fewer only if the file is that short)."""
    name = _basename(path).lower()
    if name.endswith(".gguf") and head[:4] != GGUF_MAGIC:
        raise InvalidFormatError(f"{path}: not a GGUF file (magic is {head[:4]!r}, expected b'GGUF')", "file")
    if name.endswith(".safetensors"):
        if len(head) < 8:
            raise InvalidFormatError(f"{path}: too short for a safetensors file", "file")
        (n,) = struct.unpack("<Q", head[:8])
        if n > MAX_SAFETENSORS_HEADER:
            raise InvalidFormatError(f"{path}: safetensors header length {n} is not plausible", "file")
        if len(head) > 8 and head[8:9] != b"{":
            raise InvalidFormatError(f"{path}: safetensors header is not a JSON object", "file")


def inspect_file(path: str, file: Path) -> dict:
    """Facts about one stored file, by its name; raise InvalidFormatError if it is not what it says."""
    name = _basename(path).lower()
    if name.endswith(".gguf"):
        return gguf_info(path, file)
    if name.endswith(".safetensors"):
        return safetensors_info(path, file)
    if name in _JSON_KINDS or name.endswith(".safetensors.index.json"):
        return {"kind": _JSON_KINDS.get(name, "index"), "json": _read_json(path, file)}
    return {}


def gguf_info(path: str, file: Path) -> dict:
    try:
        header = read_header(file)
    except GGUFHeaderError as exc:
        raise InvalidFormatError(f"{path}: not a readable GGUF file: {exc}", "file") from None
    size = file.stat().st_size
    if header.data_end > size:
        raise InvalidFormatError(f"{path}: GGUF file is truncated (tensor data ends at byte "
                                 f"{header.data_end}, the file has {size})", "file")
    meta = header.metadata
    arch = meta.get("general.architecture")
    file_type = _file_type_name(meta.get("general.file_type"))
    return {"kind": "gguf", "architecture": arch, "name": meta.get("general.name"),
            "type": meta.get("general.type") or "model", "parameter_count": header.parameter_count,
            "tensor_count": header.tensor_count, "file_type": file_type, "quantization": file_type,
            "context_length": meta.get(f"{arch}.context_length") if arch else None,
            "chat_template": meta.get("tokenizer.chat_template"), "split_count": meta.get("split.count"),
            "vocab_size": header.array_lengths.get("tokenizer.ggml.tokens"), "gguf_version": header.version}


def _file_type_name(value: object) -> str | None:
    if not isinstance(value, int):
        return None
    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"unknown ({value})"


def safetensors_info(path: str, file: Path) -> dict:
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise InvalidFormatError(f"{path}: too short for a safetensors file", "file")
        (n,) = struct.unpack("<Q", raw_len)
        if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise InvalidFormatError(f"{path}: safetensors header length {n} does not fit the {size}-byte file",
                                     "file")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidFormatError(f"{path}: safetensors header is not valid JSON: {exc}", "file") from None
    if not isinstance(header, dict):
        raise InvalidFormatError(f"{path}: safetensors header is not a JSON object", "file")
    header.pop("__metadata__", None)
    dtypes: Counter = Counter()
    data_end = 0
    for name, entry in header.items():
        count, end = _check_tensor(path, name, entry, size - 8 - n)
        dtypes[entry["dtype"]] += count
        data_end = max(data_end, end)
    if data_end != size - 8 - n:
        raise InvalidFormatError(f"{path}: safetensors data is {size - 8 - n} bytes but the tensors cover "
                                 f"{data_end}", "file")
    return {"kind": "safetensors", "parameter_count": sum(dtypes.values()), "tensor_count": len(header),
            "dtypes": dict(dtypes)}


def _check_tensor(path: str, name: str, entry: object, data_len: int) -> tuple[int, int]:
    """(element count, end offset) of one header entry, after checking it is well formed."""
    bad = InvalidFormatError(f"{path}: safetensors tensor {name!r} has a malformed entry", "file")
    if not isinstance(entry, dict):
        raise bad
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        raise bad
    if not all(isinstance(d, int) and d >= 0 for d in shape) or len(offsets) != 2:
        raise bad
    begin, end = offsets
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len):
        raise InvalidFormatError(f"{path}: safetensors tensor {name!r} lies outside the file's data", "file")
    count = math.prod(shape)
    if dtype in _DTYPE_BYTES and count * _DTYPE_BYTES[dtype] != end - begin:
        raise InvalidFormatError(f"{path}: safetensors tensor {name!r} has {end - begin} bytes for "
                                 f"{count} x {dtype}", "file")
    return count, end


def _read_json(path: str, file: Path) -> dict:
    if file.stat().st_size > MAX_JSON_BYTES:
        raise InvalidFormatError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB", "file")
    try:
        doc = json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidFormatError(f"{path}: not valid JSON: {exc}", "file") from None
    if not isinstance(doc, dict):
        raise InvalidFormatError(f"{path}: not a JSON object", "file")
    return doc


def detect_format(paths: list[str], declared: str | None) -> str:
    """The model's format: the declared one after checking its required files, or the one the files imply."""
    names = {_basename(p).lower() for p in paths}
    has_gguf = any(n.endswith(".gguf") for n in names)
    has_st = any(n.endswith(".safetensors") for n in names)
    fmt = declared
    if fmt is None:
        if has_gguf and not has_st:
            fmt = "gguf"
        elif "adapter_config.json" in names:
            fmt = "lora"
        elif has_st:
            fmt = "safetensors"
        else:
            raise InvalidFormatError("cannot tell the model's format from its files; declare format "
                                     f"({', '.join(FORMATS)})", "format")
    if fmt == "gguf" and not has_gguf:
        raise InvalidFormatError("a gguf model needs a .gguf file", "format")
    if fmt == "safetensors" and not (has_st and "config.json" in names):
        raise InvalidFormatError("a safetensors model needs config.json and at least one .safetensors file",
                                 "format")
    if fmt == "lora" and not ("adapter_config.json" in names and (has_st or "adapter_model.bin" in names)):
        raise InvalidFormatError("a LoRA adapter needs adapter_config.json and adapter weights "
                                 "(adapter_model.safetensors or adapter_model.bin)", "format")
    return fmt


def model_details(fmt: str, infos: dict[str, dict]) -> dict:
    """What the model's headers say, by format; `infos` maps file path to inspect_file's result."""
    by_kind: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted(infos):
        by_kind.setdefault(infos[path].get("kind", ""), []).append((path, infos[path]))
    if fmt == "gguf":
        return _gguf_details(by_kind.get("gguf", []))
    if fmt in ("safetensors", "lora"):
        details = _tensor_details(by_kind.get("safetensors", []))
        details.update(_config_details(by_kind) if fmt == "safetensors" else _adapter_details(by_kind))
        details["tokenizer_files"] = sorted(p for p in infos if _basename(p) in TOKENIZER_FILES)
        return details
    return {}


def _gguf_details(ggufs: list[tuple[str, dict]]) -> dict:
    # Multimodal models ship a projector next to the model; it is not "the" model.
    main = [g for g in ggufs if g[1].get("type") not in ("mmproj", "clip") and "mmproj" not in g[0]] or ggufs
    path, first = main[0]
    keys = ("architecture", "name", "type", "file_type", "quantization", "context_length", "chat_template")
    details = {k: first.get(k) for k in keys}
    details["parameter_count"] = sum(int(info.get("parameter_count") or 0) for _, info in main)
    details["model_file"] = path
    details["gguf_files"] = [p for p, _ in ggufs]
    return details


def _tensor_details(shards: list[tuple[str, dict]]) -> dict:
    dtypes: Counter = Counter()
    for _, info in shards:
        dtypes.update(info.get("dtypes") or {})
    return {"parameter_count": sum(dtypes.values()), "dtype": dtypes.most_common(1)[0][0] if dtypes else None,
            "dtypes": dict(dtypes), "weight_files": [p for p, _ in shards]}


def _first_json(by_kind: dict, kind: str) -> dict:
    found = by_kind.get(kind) or []
    return found[0][1].get("json", {}) if found else {}


def _config_details(by_kind: dict) -> dict:
    config = _first_json(by_kind, "config")
    archs = config.get("architectures")
    context = next((config[k] for k in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
                    if isinstance(config.get(k), int)), None)
    quant = config.get("quantization_config")
    return {"architecture": archs[0] if isinstance(archs, list) and archs else config.get("model_type"),
            "model_type": config.get("model_type"), "context_length": context,
            "torch_dtype": config.get("torch_dtype") or config.get("dtype"),
            "hidden_size": config.get("hidden_size"), "num_hidden_layers": config.get("num_hidden_layers"),
            "vocab_size": config.get("vocab_size"),
            "quantization": quant.get("quant_method") if isinstance(quant, dict) else None,
            "chat_template": _chat_template(_first_json(by_kind, "tokenizer_config"))}


def _chat_template(tokenizer_config: dict) -> str | None:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _adapter_details(by_kind: dict) -> dict:
    config = _first_json(by_kind, "adapter_config")
    return {"base_model": config.get("base_model_name_or_path"), "peft_type": config.get("peft_type"),
            "rank": config.get("r"), "lora_alpha": config.get("lora_alpha"),
            "target_modules": config.get("target_modules"), "task_type": config.get("task_type")}


def parameter_size_label(n: object) -> str:
    """A parameter count the way Ollama labels it: 494M, 7.6B ("" when unknown)."""
    if not isinstance(n, (int, float)) or isinstance(n, bool) or n <= 0:
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(int(n))
