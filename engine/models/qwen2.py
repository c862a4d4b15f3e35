"""Qwen2 / Qwen2.5 (dense; DeepSeek-R1's Qwen distillations too): Llama's layer with biases on the Q, K
and V products and RoPE on the halves of each head (neox). As llama.cpp's build_qwen2."""
from __future__ import annotations

from engine.models.llama import Llama


class Qwen2(Llama):
    arch = "qwen2"
    norm_names = ("attn_norm", "ffn_norm", "attn_q.bias", "attn_k.bias", "attn_v.bias")   # f32 tensors
    qkv_bias = True
    neox = True
    rope_base, n_ctx = 1e6, 32768
