"""Tiny synthetic GGUF files for tests, written with the `gguf` package's GGUFWriter.

    write_gguf(path, metadata={...}, tensors={"w": np.float32 array, "q": raw_tensor(...)})
    tiny_llama(path, qtype=GGMLType.Q8_0)        # a small complete llama-shaped model
    random_blocks(qtype, n_blocks, rng)          # raw block bytes with sane scales
    patch(path, offset, "<Q", value)             # byte edits for malformed-file tests
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from engine.quant import BLOCK, GGMLType, row_nbytes


@dataclass
class RawTensor:
    """Raw GGUF block bytes for a tensor of `shape` (torch order) in `qtype`."""
    data: np.ndarray
    qtype: GGMLType
    shape: tuple[int, ...]


@dataclass
class Typed:
    """A metadata value with an explicit GGUF value type (and element type for arrays)."""
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


def raw_tensor(qtype: GGMLType, shape: tuple[int, ...], rng: np.random.Generator | None = None) -> RawTensor:
    rng = rng or np.random.default_rng(0)
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    n_blocks = rows * row_nbytes(qtype, shape[-1]) // BLOCK[qtype][1]
    return RawTensor(random_blocks(qtype, n_blocks, rng), GGMLType(qtype), tuple(shape))


def random_blocks(qtype: GGMLType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes for n_blocks blocks of qtype, with every f16/bf16/f32 field set to a finite,
    modest value (so dequantized results are comparable exactly), other bytes uniformly random."""
    qtype = GGMLType(qtype)
    _, nb = BLOCK[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, nb), dtype=np.uint8)

    def f16(k: int) -> np.ndarray:   # k finite halves per block in [-0.01, 0.01] (K-quant d, dmin...)
        return rng.uniform(-0.01, 0.01, size=(n_blocks, k)).astype(np.float16).view(np.uint8)

    if qtype == GGMLType.F32:
        raw[:] = rng.standard_normal((n_blocks, 1)).astype(np.float32).view(np.uint8)
    elif qtype == GGMLType.F16:
        raw[:] = rng.standard_normal((n_blocks, 1)).astype(np.float16).view(np.uint8)
    elif qtype == GGMLType.BF16:
        raw[:] = (rng.standard_normal((n_blocks, 1)).astype(np.float32).view(np.uint32) >> 16).astype(
            np.uint16).view(np.uint8)
    elif qtype in (GGMLType.Q4_0, GGMLType.Q5_0, GGMLType.Q8_0):
        raw[:, :2] = f16(1)
    elif qtype in (GGMLType.Q4_1, GGMLType.Q5_1, GGMLType.Q2_K, GGMLType.Q4_K, GGMLType.Q5_K):
        at = 0 if qtype in (GGMLType.Q4_1, GGMLType.Q5_1, GGMLType.Q4_K, GGMLType.Q5_K) else 16 + 64
        raw[:, at:at + 4] = f16(2)
    elif qtype == GGMLType.Q3_K:
        raw[:, 108:110] = f16(1)
    elif qtype == GGMLType.Q6_K:
        raw[:, 208:210] = f16(1)
    else:
        raise ValueError(f"no random block recipe for {qtype.name}")
    return raw.reshape(-1)


_NUMPY_VTYPE = {
    "uint8": GGUFValueType.UINT8, "int8": GGUFValueType.INT8, "uint16": GGUFValueType.UINT16,
    "int16": GGUFValueType.INT16, "uint32": GGUFValueType.UINT32, "int32": GGUFValueType.INT32,
    "float32": GGUFValueType.FLOAT32, "bool": GGUFValueType.BOOL, "uint64": GGUFValueType.UINT64,
    "int64": GGUFValueType.INT64, "float64": GGUFValueType.FLOAT64,
}


def _add_meta(w: GGUFWriter, key: str, val: Any) -> None:
    if isinstance(val, Typed):
        w.add_key_value(key, val.value, val.vtype, val.sub_type)
    elif isinstance(val, bool):
        w.add_bool(key, val)
    elif isinstance(val, int):
        w.add_uint32(key, val) if 0 <= val < 2**32 else w.add_int64(key, val)
    elif isinstance(val, float):
        w.add_float32(key, val)
    elif isinstance(val, str):
        w.add_key_value(key, val, GGUFValueType.STRING)
    elif isinstance(val, np.ndarray):
        w.add_key_value(key, val.tolist(), GGUFValueType.ARRAY, _NUMPY_VTYPE[val.dtype.name])
    elif isinstance(val, (list, tuple)):
        w.add_key_value(key, list(val), GGUFValueType.ARRAY)
    else:
        raise TypeError(f"no GGUF type for {key}={val!r}")


def write_gguf(path, *, arch: str | None = "llama", metadata: dict[str, Any] | None = None,
               tensors: dict[str, np.ndarray | RawTensor] | None = None, alignment: int | None = None) -> Path:
    """Write a GGUF v3 file. Plain float32/float16 arrays are stored as F32/F16 (torch-order shapes)."""
    path = Path(path)
    w = GGUFWriter(path, arch or "llama")
    if arch is None:
        w.kv_data[0].pop("general.architecture", None)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, val in (metadata or {}).items():
        _add_meta(w, key, val)
    for name, t in (tensors or {}).items():
        if isinstance(t, RawTensor):
            rows = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
            data = np.ascontiguousarray(t.data, dtype=np.uint8).reshape(rows, -1)
            if len(t.shape) > 2:
                data = data.reshape(*t.shape[:-1], -1)
            w.add_tensor(name, data, raw_dtype=GGMLQuantizationType(int(t.qtype)))
        else:
            w.add_tensor(name, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_llama(path, *, qtype: GGMLType = GGMLType.F32, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
               n_head_kv: int = 2, n_ff: int = 128, n_vocab: int = 64, n_ctx: int = 256, seed: int = 0,
               rope_freqs: list[float] | None = None, metadata: dict[str, Any] | None = None,
               arch: str = "llama", head_dim: int | None = None, qk_norm: bool = False, tied: bool = False,
               qkv_bias: bool = False) -> Path:
    """A small llama-shaped model with random weights: matrices in `qtype`, norms in F32; rope_freqs: a
    `rope_freqs.weight` tensor (Llama 3.1's per-pair frequency divisors); metadata: keys added or replaced.
    arch "qwen3" with qk_norm=True (random per-head Q / K norm weights) and a head_dim of its own makes a
    tiny Qwen3; tied: no output.weight (the embeddings serve as the output head); qkv_bias: random Q / K / V
    biases (arch "qwen2")."""
    rng = np.random.default_rng(seed)
    explicit_head = head_dim is not None
    head_dim = head_dim or n_embd // n_head

    def mat(rows: int, cols: int):
        if qtype == GGMLType.F32:
            return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        if qtype == GGMLType.F16:
            return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)
        return raw_tensor(qtype, (rows, cols), rng)

    tensors: dict[str, Any] = {"token_embd.weight": mat(n_vocab, n_embd)}
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors[p + "attn_norm.weight"] = np.ones(n_embd, np.float32)
        tensors[p + "attn_q.weight"] = mat(n_head * head_dim, n_embd)
        tensors[p + "attn_k.weight"] = mat(n_head_kv * head_dim, n_embd)
        tensors[p + "attn_v.weight"] = mat(n_head_kv * head_dim, n_embd)
        if qkv_bias:
            for name, width in (("attn_q", n_head), ("attn_k", n_head_kv), ("attn_v", n_head_kv)):
                tensors[p + name + ".bias"] = (0.5 * rng.standard_normal(width * head_dim)).astype(np.float32)
        if qk_norm:
            tensors[p + "attn_q_norm.weight"] = (1 + 0.3 * rng.standard_normal(head_dim)).astype(np.float32)
            tensors[p + "attn_k_norm.weight"] = (1 + 0.3 * rng.standard_normal(head_dim)).astype(np.float32)
        tensors[p + "attn_output.weight"] = mat(n_embd, n_head * head_dim)
        tensors[p + "ffn_norm.weight"] = np.ones(n_embd, np.float32)
        tensors[p + "ffn_gate.weight"] = mat(n_ff, n_embd)
        tensors[p + "ffn_up.weight"] = mat(n_ff, n_embd)
        tensors[p + "ffn_down.weight"] = mat(n_embd, n_ff)
    tensors["output_norm.weight"] = np.ones(n_embd, np.float32)
    if not tied:
        tensors["output.weight"] = mat(n_vocab, n_embd)
    if rope_freqs is not None:
        tensors["rope_freqs.weight"] = np.asarray(rope_freqs, np.float32)

    specials = ["<unk>", "<s>", "</s>"]
    tokens = specials + [chr(0x21 + i) for i in range(n_vocab - len(specials))]
    a = arch
    meta = {
        "general.name": f"tiny-{arch}",
        f"{a}.context_length": n_ctx, f"{a}.embedding_length": n_embd, f"{a}.block_count": n_layer,
        f"{a}.feed_forward_length": n_ff, f"{a}.attention.head_count": n_head,
        f"{a}.attention.head_count_kv": n_head_kv, f"{a}.rope.freq_base": 10000.0,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-5, f"{a}.rope.dimension_count": head_dim,
        **({f"{a}.attention.key_length": head_dim, f"{a}.attention.value_length": head_dim} if explicit_head else {}),
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.zeros(n_vocab, np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3] + [1] * (n_vocab - 3), np.int32),
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        **(metadata or {}),
    }
    return write_gguf(path, arch=arch, metadata=meta, tensors=tensors)


# ---- byte edits ---------------------------------------------------------------------------------
def patch(path, offset: int, fmt: str, value) -> None:
    """Overwrite struct-packed `value` at `offset` in the file."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def find(path, needle: bytes, start: int = 0) -> int:
    """Offset of the first occurrence of needle in the file (asserting it is there)."""
    data = Path(path).read_bytes()
    at = data.find(needle, start)
    assert at >= 0, f"{needle!r} not in {path}"
    return at


def tensor_info_at(path, name: str) -> int:
    """Offset of a tensor-table entry's n_dims field (right after its name)."""
    enc = name.encode()
    return find(path, struct.pack("<Q", len(enc)) + enc) + 8 + len(enc)


def key_value_at(path, key: str) -> int:
    """Offset of a metadata entry's value-type field (right after its key)."""
    enc = key.encode()
    return find(path, struct.pack("<Q", len(enc)) + enc) + 8 + len(enc)
