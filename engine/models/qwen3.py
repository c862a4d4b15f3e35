"""Qwen3 (dense): Llama's layer with an RMSNorm on each head of Q and K before RoPE, RoPE on the halves
of each head (neox), the head size from the metadata (not n_embd / n_head), the output head often tied
to the embeddings. As llama.cpp's build_qwen3."""
from __future__ import annotations

from engine.models.llama import Llama


class Qwen3(Llama):
    arch = "qwen3"
    norm_names = ("attn_norm", "attn_q_norm", "attn_k_norm", "ffn_norm")
    qk_norm = True
    neox = True
    rope_base, n_ctx = 1e6, 40960
