"""A model's hyperparameters and tensor table checked against each other before anything is allocated.

A GGUF's metadata is untrusted: a layer count of 2**64, a head count of 0, or an attention tensor whose
shape disagrees with the head count would otherwise surface as a MemoryError, a ZeroDivisionError, or
a torch shape error at the first token. Every check here ends in one BadModelFile line naming the key
or tensor, as llama.cpp refuses such files at load ("tensor 'x' has wrong shape").
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from engine.errors import BadModelFile, UnsupportedModel
from engine.gguf_strings import StringArray

MAX_DIM = 1 << 20          # widths, head counts, feed-forward sizes: the largest real models stay far below
MAX_LAYERS = 4096
MAX_CTX = 1 << 27          # trained context: 128 Mi tokens (the longest real models have 10 Mi)
_REQUIRED = object()


def bad(g, what: str) -> BadModelFile:
    return BadModelFile(f"{g.path.name}: {what}; the file is corrupt or not a model Cellar can run")


def number(g, key: str, default: Any = _REQUIRED, cast: Callable = int, lo: float = 1, hi: float = MAX_DIM):
    """A metadata number, cast and range-checked; BadModelFile naming the key when it is missing, of the
    wrong kind, or out of [lo, hi]. A per-layer array counts as its largest value where all are equal."""
    if key not in g.metadata:
        if default is _REQUIRED:
            g.require(key)
        if default is None:
            return None
    value = g.get(key, default)
    if hasattr(value, "tolist") and not isinstance(value, (int, float)):
        items = value.tolist()
        if isinstance(items, list):
            if not items or any(x != items[0] for x in items):
                raise bad(g, f"metadata '{key}' varies per layer ({items[:4]}...), which this architecture "
                             f"does not support")
            value = items[0]
    if isinstance(value, (str, bytes, list, dict)) or (cast is int and isinstance(value, float)):
        raise bad(g, f"metadata '{key}' is {type(value).__name__}, not a number")
    try:
        v = cast(value)
    except (TypeError, ValueError, OverflowError):
        raise bad(g, f"metadata '{key}' has an unusable value {str(value)[:40]!r}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise bad(g, f"metadata '{key}' is {v}")
    if not lo <= v <= hi:
        raise bad(g, f"metadata '{key}' is {v}, outside {lo}..{hi}")
    return v


def check_hparams(g, hp) -> None:
    """Relations between hyperparameters that the graph relies on."""
    if hp.n_layer > len(g.tensors):
        raise bad(g, f"block_count is {hp.n_layer} but the file has only {len(g.tensors)} tensors")
    if hp.n_head % hp.n_head_kv:
        raise bad(g, f"{hp.n_head} attention heads cannot be shared by {hp.n_head_kv} KV heads")
    if hp.n_rot < 2 or hp.n_rot % 2 or hp.n_rot > hp.head_dim:
        raise bad(g, f"rope.dimension_count is {hp.n_rot}; it must be even and at most the head size {hp.head_dim}")
    if hp.eps <= 0:
        raise bad(g, f"layer_norm_rms_epsilon is {hp.eps}; it must be above 0")


def check_tensors(g, hp, globals_: dict[str, tuple[int, ...]], per_layer: dict[str, tuple[int, ...]],
                  optional: frozenset[str] = frozenset()) -> None:
    """Every tensor the graph reads exists with the shape (torch order) the hyperparameters imply, and
    the vocabulary has exactly one embedding row per token."""
    want = dict(globals_)
    for il in range(hp.n_layer):
        # "attn_q" names attn_q.weight, "attn_q.bias" itself
        want.update({f"blk.{il}.{short}" + ("" if short.endswith(".bias") else ".weight"): shape
                     for short, shape in per_layer.items()})
    for name, shape in want.items():
        t = g.tensors.get(name)
        if t is None:
            if name in optional:
                continue
            raise bad(g, f"tensor '{name}' is missing")
        if tuple(t.shape) != tuple(shape):
            raise bad(g, f"tensor '{name}' has shape {list(t.shape)}, the metadata implies {list(shape)}")
    tokens = g.get("tokenizer.ggml.tokens")
    if isinstance(tokens, (list, StringArray)) and len(tokens) and len(tokens) != hp.n_vocab:
        raise bad(g, f"the vocabulary has {len(tokens)} tokens but token_embd.weight has {hp.n_vocab} rows")


def shared_hparams(g, arch: str, *, n_head: int, head_dim: int, rope_base: float, n_ctx: int) -> dict:
    """The hyperparameters every decoder-only architecture here reads alike, with their bounds and the
    architecture's defaults (rope_base, n_ctx): Hparams keyword arguments."""
    a = arch
    return dict(
        n_head_kv=number(g, f"{a}.attention.head_count_kv", n_head),
        head_dim_v=number(g, f"{a}.attention.value_length", head_dim),
        n_ff=number(g, f"{a}.feed_forward_length"),
        eps=number(g, f"{a}.attention.layer_norm_rms_epsilon", cast=float, lo=0, hi=1),
        n_rot=number(g, f"{a}.rope.dimension_count", head_dim),
        rope_base=number(g, f"{a}.rope.freq_base", rope_base, float, lo=1e-3, hi=1e15),
        n_ctx_train=number(g, f"{a}.context_length", n_ctx, hi=MAX_CTX))


def rope_scale(g, arch: str) -> float:
    """The linear position scaling of `{arch}.rope.scaling.type` (1 / factor), 1 without one; a scaling
    Cellar does not compute (YaRN, LongRoPE) is refused rather than run wrong."""
    kind = g.get(f"{arch}.rope.scaling.type", "none")
    kind = kind if isinstance(kind, str) else "none"
    if kind == "none":
        return 1.0
    if kind == "linear":
        return 1.0 / number(g, f"{arch}.rope.scaling.factor", 1.0, float, lo=1e-3, hi=1e6)
    raise UnsupportedModel(f"{g.path.name}: RoPE scaling '{kind[:40]}' is not supported (Cellar runs none and "
                           "linear); use a model without it")


def rope_factors(g, n_rot: int) -> tuple[float, ...]:
    """The optional `rope_freqs.weight` (Llama 3.1 and later: a divisor of each rotated pair's frequency),
    checked: F32, n_rot / 2 finite values above 0. () without it, or where the file was opened without
    its tensor data (a preview: the memory plan does not depend on it)."""
    t = g.tensors.get("rope_freqs.weight")
    if t is None:
        return ()
    if int(t.qtype) != 0 or tuple(t.shape) != (n_rot // 2,):
        raise bad(g, f"tensor 'rope_freqs.weight' should be {n_rot // 2} F32 values, it is {list(t.shape)} "
                     f"of type {int(t.qtype)}")
    try:
        raw = g.tensor_data("rope_freqs.weight")
    except ValueError:
        return ()
    f = np.frombuffer(bytes(raw), dtype="<f4")
    if not (np.isfinite(f).all() and (f > 0).all()):
        raise bad(g, "tensor 'rope_freqs.weight' holds a value that is not a finite number above 0")
    return tuple(float(v) for v in f)
