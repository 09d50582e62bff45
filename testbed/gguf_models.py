"""Write small but *valid* llama-architecture GGUF files for tests and benchmarks.

The files carry every tensor and metadata key llama.cpp needs to load a llama
model, plus a tiny SentencePiece-style ("llama") vocabulary, so the same file can
be pulled, verified, inspected and actually run.  Output is byte-for-byte
deterministic for the same arguments.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n"
)

# Fixed token ids, as in Llama/SentencePiece vocabularies.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
_SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# llama.cpp's SPM tokenizer falls back to "<0xNN>" byte tokens for any text it
# cannot cover and throws if one is missing, so all 256 must be present.
_BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
MIN_VOCAB_SIZE = len(_SPECIALS) + len(_BYTE_TOKENS) + 1  # + at least "▁"
DEFAULT_VOCAB_SIZE = 288  # smallest multiple of 32 above MIN_VOCAB_SIZE

_FILE_TYPES = {0: np.float32, 1: np.float16}  # general.file_type: ALL_F32, MOSTLY_F16
_RANDOM_CHUNK = 1 << 20  # elements of real randomness per tensor; larger tensors tile it


def _vocab(vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (specials + 256 byte tokens)")
    tokens = list(_SPECIALS) + list(_BYTE_TOKENS)
    types = [TokenType.UNKNOWN] + [TokenType.CONTROL] * 4 + [TokenType.BYTE] * 256
    pieces = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["▁" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    i = 0
    while len(tokens) < vocab_size:
        tokens.append(pieces[i] if i < len(pieces) else f"▁w{i}")
        types.append(TokenType.NORMAL)
        i += 1
    # SPM merges prefer higher scores; specials/bytes never merge, so score them 0.
    scores = [0.0] * len(tokens)
    for j, t in enumerate(types):
        if t == TokenType.NORMAL:
            scores[j] = -float(j)
    return tokens, scores, [int(t) for t in types]


def _layout(n_layers: int, width: int, ff: int, vocab_size: int, kv_width: int,
            file_type: int) -> list[tuple[str, tuple[int, ...], type]]:
    """(name, numpy shape, dtype) for every tensor, in file order.

    numpy shapes are the reverse of ggml's ne[], e.g. token_embd ne=[width, vocab].
    1-D norm vectors stay F32 even in F16 files, exactly like llama.cpp's converter.
    """
    if file_type not in _FILE_TYPES:
        raise ValueError("file_type must be 0 (F32) or 1 (F16)")
    mat, vec = _FILE_TYPES[file_type], np.float32
    out: list[tuple[str, tuple[int, ...], type]] = [("token_embd.weight", (vocab_size, width), mat)]
    for n in range(n_layers):
        b = f"blk.{n}."
        out += [
            (b + "attn_norm.weight", (width,), vec),
            (b + "attn_q.weight", (width, width), mat),
            (b + "attn_k.weight", (kv_width, width), mat),
            (b + "attn_v.weight", (kv_width, width), mat),
            (b + "attn_output.weight", (width, width), mat),
            (b + "ffn_norm.weight", (width,), vec),
            (b + "ffn_gate.weight", (ff, width), mat),
            (b + "ffn_up.weight", (ff, width), mat),
            (b + "ffn_down.weight", (width, ff), mat),
        ]
    out += [("output_norm.weight", (width,), vec), ("output.weight", (vocab_size, width), mat)]
    return out


def _heads(width: int, n_heads: int | None, n_kv_heads: int | None) -> tuple[int, int]:
    n_heads = n_heads or max(1, width // 32)
    n_kv_heads = n_kv_heads or n_heads
    head_dim = width // n_heads
    if width % n_heads or head_dim % 2 or n_heads % n_kv_heads:
        raise ValueError(f"width={width} does not split into {n_heads} heads / {n_kv_heads} kv heads "
                         "with an even head size")
    return n_heads, n_kv_heads


def _fill(rs: np.random.RandomState, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    if name.endswith("norm.weight"):
        return np.ones(shape, dtype=dtype)  # RMS-norm gains of 1 keep activations sane
    n = math.prod(shape)
    # Small random weights (std 0.02) so inference produces finite logits.
    chunk = (rs.standard_normal(min(n, _RANDOM_CHUNK)).astype(np.float32) * 0.02).astype(dtype)
    if n <= _RANDOM_CHUNK:
        return chunk.reshape(shape)
    # Big tensors (benchmark models): tile one random chunk instead of drawing
    # hundreds of millions of normals -- keeps a 1 GiB write to seconds.
    arr = np.empty(n, dtype=dtype)
    for start in range(0, n, _RANDOM_CHUNK):
        stop = min(n, start + _RANDOM_CHUNK)
        arr[start:stop] = chunk[: stop - start]
    return arr.reshape(shape)


def write_llama_gguf(
    path: str | os.PathLike[str],
    *,
    name: str = "tiny",
    n_layers: int = 2,
    width: int = 64,
    ff: int = 128,
    context_length: int = 2048,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    file_type: int = 1,
    seed: int = 0,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
) -> Path:
    """Write a loadable llama GGUF to *path* and return it as a Path.

    The file is written under a temporary name and renamed into place, so a
    crashed/interrupted writer never leaves a truncated model behind.
    """
    path = Path(path)
    n_heads, n_kv_heads = _heads(width, n_heads, n_kv_heads)
    kv_width = width // n_heads * n_kv_heads
    tokens, scores, types = _vocab(vocab_size)
    layout = _layout(n_layers, width, ff, vocab_size, kv_width, file_type)

    tmp = path.with_name(path.name + ".partial")
    w = GGUFWriter(tmp, "llama")  # also sets general.architecture
    w.add_name(name)
    w.add_file_type(file_type)
    w.add_quantization_version(2)
    w.add_context_length(context_length)
    w.add_embedding_length(width)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_rope_dimension_count(width // n_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    # Declare all tensors first, then stream them one at a time: only the tensor
    # being written is ever in memory (GGUFWriter.add_tensor would keep them all).
    for tname, shape, dtype in layout:
        w.add_tensor_info(tname, shape, np.dtype(dtype), math.prod(shape) * np.dtype(dtype).itemsize)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        rs = np.random.RandomState(seed)
        for tname, shape, dtype in layout:
            w.write_tensor_data(_fill(rs, tname, shape, dtype))
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def tensor_bytes(*, n_layers: int = 2, width: int = 64, ff: int = 128,
                 vocab_size: int = DEFAULT_VOCAB_SIZE, file_type: int = 1,
                 n_heads: int | None = None, n_kv_heads: int | None = None, **_: object) -> int:
    """Bytes of tensor data (a lower bound of the file size) for these dimensions."""
    n_heads, n_kv_heads = _heads(width, n_heads, n_kv_heads)
    layout = _layout(n_layers, width, ff, vocab_size, width // n_heads * n_kv_heads, file_type)
    return sum(math.prod(s) * np.dtype(d).itemsize for _, s, d in layout)


def _smallest(lo: int, step: int, ok) -> int:
    """Smallest value lo + k*step (k >= 0) with ok(value) true; ok must be monotone."""
    hi = 1
    while not ok(lo + hi * step):
        hi *= 2
    k_lo, k_hi = -1, hi  # ok(lo + k_hi*step) holds
    while k_hi - k_lo > 1:
        mid = (k_lo + k_hi) // 2
        if mid >= 0 and ok(lo + mid * step):
            k_hi = mid
        else:
            k_lo = mid
    return lo + k_hi * step


def write_gguf_of_size(path: str | os.PathLike[str], min_bytes: int, **kw) -> Path:
    """Write a valid llama GGUF of at least *min_bytes* (overshoot: metadata + <1 ff step).

    Grows width (in steps of 32, ff = 2*width) and then ff (steps of 32); never
    adds tensors, because llama.cpp rejects unknown ones.  Caller-fixed width/ff
    are respected; other keyword arguments go to write_llama_gguf.
    """
    fixed_width, fixed_ff = "width" in kw, "ff" in kw
    width = kw.pop("width", 64)
    ff = kw.pop("ff", 2 * width)
    size = lambda w, f: tensor_bytes(width=w, ff=f, **kw)  # noqa: E731
    if size(width, ff) < min_bytes:
        if fixed_width and fixed_ff:
            raise ValueError("cannot reach min_bytes with width and ff both fixed")
        if fixed_ff:
            width = _smallest(width, 32, lambda w: size(w, ff) >= min_bytes)
        else:
            if not fixed_width:
                # Largest width (ff=2w) still under the target; ff then tops it up finely.
                width = max(width, _smallest(width, 32, lambda w: size(w, 2 * w) >= min_bytes) - 32)
                ff = max(ff, 2 * width)
            ff = _smallest(ff, 32, lambda f: size(width, f) >= min_bytes)
    return write_llama_gguf(path, width=width, ff=ff, **kw)
