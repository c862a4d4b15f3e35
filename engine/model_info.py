"""What a GGUF model is, from its metadata and tensor table alone (no tensor bytes read): the
hyperparameters the memory planner needs, and the summary people look for before loading a model."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from engine.errors import BadModelFile
from engine.gguf_strings import StringArray
from engine.model_checks import MAX_CTX, MAX_DIM, MAX_LAYERS, number

# Sliding-window layer patterns (llama.cpp's set_swa_pattern): with pattern P, layer il uses the window
# when il % P < P - 1, i.e. every P-th layer is global. Architectures not listed keep full KV everywhere.
SWA_PATTERN = {"gemma3": 6, "gemma2": 2, "cohere2": 4}


@dataclass(frozen=True)
class Hparams:
    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    n_head: tuple[int, ...]          # per layer
    n_head_kv: tuple[int, ...]       # per layer
    head_dim_k: int
    head_dim_v: int
    n_ff: tuple[int, ...]            # per layer
    swa_window: int                  # 0: no sliding window
    swa_layers: tuple[bool, ...]     # per layer: True where the layer keeps only the window

    def kv_width(self, il: int) -> tuple[int, int]:
        """(K, V) values per cell of layer il: n_kv_heads * head_dim."""
        return self.n_head_kv[il] * self.head_dim_k, self.n_head_kv[il] * self.head_dim_v

    @property
    def swa_pattern(self) -> str:
        """'S' for a sliding-window layer, 'G' for a global one, in layer order (empty without SWA)."""
        return "".join("S" if s else "G" for s in self.swa_layers) if self.swa_window else ""


def _per_layer(g, key: str, n_layer: int, default: int | None = None, lo: int = 0) -> tuple[int, ...]:
    v = g.get(key)
    if v is None:
        if default is None:
            g.require(key)
        return (number(g, key, default, lo=lo),) * n_layer
    if isinstance(v, np.ndarray):
        if v.size != n_layer or v.dtype.kind not in "iu":
            raise BadModelFile(f"{g.path.name}: metadata '{key}' has {v.size} values for {n_layer} layers; "
                               f"the file is corrupt")
        if v.size and not (lo <= int(v.min()) and int(v.max()) <= MAX_DIM):
            raise BadModelFile(f"{g.path.name}: metadata '{key}' holds {int(v.min())}..{int(v.max())}, outside "
                               f"{lo}..{MAX_DIM}; the file is corrupt")
        return tuple(int(x) for x in v)
    return (number(g, key, lo=lo),) * n_layer


def hparams(g) -> Hparams:
    """The shape of the model from its metadata (BadModelFile naming a missing or absurd key). Every
    number is range-checked before it sizes anything: a lying header cannot make the plan allocate."""
    arch = g.arch
    p = f"{arch}."
    n_layer = number(g, p + "block_count", hi=min(MAX_LAYERS, max(len(g.tensors), 1)))
    n_embd = number(g, p + "embedding_length")
    n_head = _per_layer(g, p + "attention.head_count", n_layer)
    head0 = max(n_head)
    if head0 <= 0:
        raise BadModelFile(f"{g.path.name}: metadata '{p}attention.head_count' is {head0}, it must be above 0; "
                           f"the file is corrupt")
    n_head_kv = _per_layer(g, p + "attention.head_count_kv", n_layer, default=head0)
    n_ff = _per_layer(g, p + "feed_forward_length", n_layer, default=4 * n_embd)
    hd_k = number(g, p + "attention.key_length", max(n_embd // head0, 1))
    hd_v = number(g, p + "attention.value_length", hd_k)
    tokens = g.get("tokenizer.ggml.tokens")
    emb = g.tensors.get("token_embd.weight")
    n_vocab = number(g, p + "vocab_size", len(tokens) if isinstance(tokens, (list, StringArray)) else (emb.shape[0] if emb else 0),
                     lo=0, hi=1 << 24)
    window = number(g, p + "attention.sliding_window", 0, lo=0, hi=MAX_CTX)
    pattern = g.get(p + "attention.sliding_window_pattern")
    if isinstance(pattern, np.ndarray) and pattern.size == n_layer:
        swa = tuple(bool(x) for x in pattern)
    else:
        every = int(pattern) if isinstance(pattern, int) and 0 < pattern <= MAX_LAYERS else SWA_PATTERN.get(arch, 0)
        swa = tuple(bool(window and every and il % every < every - 1) for il in range(n_layer))
    if not any(swa):
        window = 0
    n_ctx = number(g, p + "context_length", 2048, hi=MAX_CTX)
    return Hparams(arch, n_layer, n_embd, n_vocab, n_ctx, n_head, n_head_kv, hd_k, hd_v, n_ff, window, swa)


def layer_of(name: str) -> int | None:
    """The repeating layer a tensor belongs to ('blk.N.'), or None."""
    if name.startswith("blk."):
        head = name[4:].split(".", 1)[0]
        if head.isdigit():
            return int(head)
    return None


def model_summary(g) -> dict[str, Any]:
    """Architecture, size, quantization mix and attention shape, as plain JSON-able values."""
    h = hparams(g)
    mix: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "params": 0, "bytes": 0})
    for t in g.tensors.values():
        m = mix[t.qtype.name]
        m["tensors"] += 1
        m["params"] += prod(t.shape)
        m["bytes"] += t.nbytes
    n_params = sum(m["params"] for m in mix.values())
    n_bytes = sum(m["bytes"] for m in mix.values())
    quant = {k: {**v, "bits_per_weight": round(8 * v["bytes"] / v["params"], 3)}
             for k, v in sorted(mix.items(), key=lambda kv: -kv[1]["bytes"])}
    template = g.get("tokenizer.chat_template")
    return {
        "name": g.get("general.name", g.path.stem), "arch": h.arch, "file": str(g.path), "file_size": g.file_size,
        "parameters": n_params, "bits_per_weight": round(8 * n_bytes / max(n_params, 1), 3), "quant_mix": quant,
        "context_length": h.n_ctx_train, "layers": h.n_layer, "embedding_length": h.n_embd,
        "feed_forward_length": max(h.n_ff), "heads": max(h.n_head), "kv_heads": max(h.n_head_kv),
        "head_dim": h.head_dim_k, "vocab_size": h.n_vocab,
        "sliding_window": h.swa_window, "swa_pattern": h.swa_pattern,
        "swa_layers": sum(h.swa_layers), "tied_embeddings": "output.weight" not in g.tensors,
        "chat_template": isinstance(template, str) and bool(template.strip()),
    }
