"""Llama (SmolLM2, Llama 2 / 3.x, Mistral and kin): RMSNorm, RoPE on adjacent pairs, grouped-query
attention, SwiGLU. Llama 3.1 and later carry their RoPE frequency scaling as a tensor (rope_freqs:
a divisor per rotated pair), linear RoPE scaling comes from the metadata.

GGUF's llama conversion permutes Q and K rows so that ggml's "normal" RoPE (pairs x[2i], x[2i+1])
gives the Hugging Face model's rotate-half result.
"""
from __future__ import annotations

from engine import decode_native
from engine.kv_cache import KVMemory
from engine.models.base import Hparams, Step, Transformer, attention, past_attention, inv_sqrt
from engine.model_checks import (MAX_LAYERS, check_hparams, check_tensors, number, rope_factors, rope_scale,
                                 shared_hparams)
from engine.ops import Scratch
from engine.prefill import SILU, layer_ops


class Llama(Transformer):
    arch = "llama"
    norm_names = ("attn_norm", "ffn_norm")
    qk_norm = False                 # an RMSNorm on each head of Q and K before RoPE (engine/models/qwen3.py)
    qkv_bias = False                # biases added to the Q, K and V products (engine/models/qwen2.py)
    neox = False                    # RoPE pairs (x[i], x[i + n_rot/2]) rather than adjacent ones
    rope_base, n_ctx = 10000.0, 4096    # where the metadata does not say

    @classmethod
    def hparams(cls, g) -> Hparams:
        a = cls.arch
        n_embd = number(g, f"{a}.embedding_length")
        n_head = number(g, f"{a}.attention.head_count")
        head_dim = number(g, f"{a}.attention.key_length", n_embd // n_head)
        emb = g.tensors.get("token_embd.weight")
        n_vocab = number(g, f"{a}.vocab_size", emb.shape[0] if emb is not None else 0, hi=1 << 24)
        n_layer = number(g, f"{a}.block_count", hi=MAX_LAYERS)
        shared = shared_hparams(g, a, n_head=n_head, head_dim=head_dim, rope_base=cls.rope_base, n_ctx=cls.n_ctx)
        hp = Hparams(n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head, head_dim=head_dim,
                     rope_neox=cls.neox, rope_scale=rope_scale(g, a), rope_factors=rope_factors(g, shared["n_rot"]),
                     **shared)
        check_hparams(g, hp)
        check_tensors(g, hp, cls.global_shapes(hp), cls.layer_shapes(hp), frozenset({"output.weight"}))
        return hp

    @staticmethod
    def global_shapes(hp: Hparams) -> dict[str, tuple[int, ...]]:
        return {"token_embd.weight": (hp.n_vocab, hp.n_embd), "output_norm.weight": (hp.n_embd,),
                "output.weight": (hp.n_vocab, hp.n_embd)}

    @classmethod
    def layer_shapes(cls, hp: Hparams) -> dict[str, tuple[int, ...]]:
        e, q, k, v = hp.n_embd, hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_head_kv * hp.head_dim_v
        norms = {"attn_q_norm": (hp.head_dim,), "attn_k_norm": (hp.head_dim,)} if cls.qk_norm else {}
        if cls.qkv_bias:
            norms.update({"attn_q.bias": (q,), "attn_k.bias": (k,), "attn_v.bias": (v,)})
        return {"attn_norm": (e,), "attn_q": (q, e), "attn_k": (k, e), "attn_v": (v, e), **norms,
                "attn_output": (e, hp.n_head * hp.head_dim_v), "ffn_norm": (e,), "ffn_gate": (hp.n_ff, e),
                "ffn_up": (hp.n_ff, e), "ffn_down": (e, hp.n_ff)}

    def block(self, il: int, x, w: dict, step: Step, kv: KVMemory, scratch: Scratch, rows=None):
        if (y := decode_native.layer(self, il, x, w, step, kv)) is not None:
            return y               # one token (of each sequence): the whole layer in one native call
        hp, n = self.hp, len(step.ids)
        rope, L = self.rope_of(il), layer_ops(x, w, scratch)
        h = L.norm(x, w["attn_norm"], hp.eps)
        q, k, v = L.linear_many(h, [w["attn_q"], w["attn_k"], w["attn_v"]], ("q", "k", "v"))
        if self.qkv_bias:
            q, k, v = (L.bias(t, w[f"attn_{s}.bias"], s) for t, s in ((q, "q"), (k, "k"), (v, "v")))
        qn, kn = (w["attn_q_norm"], w["attn_k_norm"]) if self.qk_norm else (None, None)
        q = L.rope(q, hp.n_head, hp.head_dim, rope, step.pos, "q", qn, hp.eps)
        k = L.rope(k, hp.n_head_kv, hp.head_dim, rope, step.pos, "k", kn, hp.eps)
        v = L.as_f32(v, "v").view(n, hp.n_head_kv, hp.head_dim_v)
        a = attention(q, k, v, kv.cache_of(il), il, step, inv_sqrt(hp.head_dim),
                      L.attention_out(n) if rows is None else None, rows)
        if rows is not None:       # the last layer of a prompt: the rows that want logits go on
            if not rows:
                return x[:0]
            x, L = past_attention(x, w, scratch, rows)
        x, h = L.residual(x, L.linear(a, w["attn_output"], "o"), hp.eps, w_next=w["ffn_norm"])
        gate, up = L.linear_many(h, [w["ffn_gate"], w["ffn_up"]], ("gate", "up"))
        x, _ = L.residual(x, L.linear(L.glu(SILU, gate, up), w["ffn_down"], "o"), hp.eps)
        return x
