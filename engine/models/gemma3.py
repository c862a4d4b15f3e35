"""Gemma 3: llama.cpp's gemma3 graph.

Embeddings scaled by sqrt(n_embd); per layer a pre- and post-norm around attention and around the
feed-forward; RMSNorm on each Q and K head; RoPE on halves ("neox"), base 10000 on sliding-window
layers and rope.freq_base on global ones; queries scaled by 1/sqrt(head_dim)
(1/sqrt(n_embd/n_head) on the 27B model), linear RoPE scaling on global layers when the metadata
asks; GELU(tanh)-gated
feed-forward. Five layers in six attend within a sliding window (layer il is global when il % 6 == 5).
The GGUF conversion already added Gemma's +1 to every norm weight. The output head is the tied
token embedding, run as a GEMV on its Q8_0 blocks.
"""
from __future__ import annotations

import math

from engine import decode_native
from engine.kv_cache import KVMemory
from engine.models.base import Hparams, Step, Transformer, attention, past_attention
from engine.model_checks import MAX_CTX, MAX_LAYERS, check_hparams, check_tensors, number, rope_scale, shared_hparams
from engine.ops import Scratch, get_rows
from engine.prefill import GELU, layer_ops

SWA_PATTERN = 6            # llama.cpp: hparams.set_swa_pattern(6)
ROPE_BASE_SWA = 10000.0


class Gemma3(Transformer):
    arch = "gemma3"
    norm_names = ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")

    @classmethod
    def hparams(cls, g) -> Hparams:
        a = cls.arch
        n_embd = number(g, f"{a}.embedding_length")
        n_head = number(g, f"{a}.attention.head_count")
        n_layer = number(g, f"{a}.block_count", hi=MAX_LAYERS)
        head_dim = number(g, f"{a}.attention.key_length", n_embd // n_head)
        window = number(g, f"{a}.attention.sliding_window", 0, lo=0, hi=MAX_CTX)
        swa = frozenset(il for il in range(n_layer) if window and il % SWA_PATTERN < SWA_PATTERN - 1)
        emb = g.tensors.get("token_embd.weight")
        hp = Hparams(
            n_vocab=emb.shape[0] if emb is not None else 0,
            n_embd=n_embd, n_layer=n_layer, n_head=n_head, head_dim=head_dim, rope_neox=True,
            **shared_hparams(g, a, n_head=n_head, head_dim=head_dim, rope_base=1e6, n_ctx=32768),
            swa_window=window, swa_layers=swa, rope_base_swa=ROPE_BASE_SWA, rope_scale=rope_scale(g, a),
            # llama.cpp: the 27B model (62 layers) scales queries by 1/sqrt(n_embd / n_head)
            q_scale=1.0 / math.sqrt(n_embd // n_head if n_layer == 62 else head_dim))
        check_hparams(g, hp)
        check_tensors(g, hp, {"token_embd.weight": (hp.n_vocab, n_embd), "output_norm.weight": (n_embd,),
                              "output.weight": (hp.n_vocab, n_embd)}, cls.layer_shapes(hp),
                      frozenset({"output.weight"}))
        return hp

    @staticmethod
    def layer_shapes(hp: Hparams) -> dict[str, tuple[int, ...]]:
        e, q, k, v = hp.n_embd, hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_head_kv * hp.head_dim_v
        return {"attn_norm": (e,), "attn_q_norm": (hp.head_dim,), "attn_k_norm": (hp.head_dim,),
                "post_attention_norm": (e,), "ffn_norm": (e,), "post_ffw_norm": (e,), "attn_q": (q, e),
                "attn_k": (k, e), "attn_v": (v, e), "attn_output": (e, hp.n_head * hp.head_dim_v),
                "ffn_gate": (hp.n_ff, e), "ffn_up": (hp.n_ff, e), "ffn_down": (e, hp.n_ff)}

    def embed(self, ids):
        return get_rows(self.tok_embd, ids) * math.sqrt(self.hp.n_embd)

    def block(self, il: int, x, w: dict, step: Step, kv: KVMemory, scratch: Scratch, rows=None):
        if (y := decode_native.layer(self, il, x, w, step, kv)) is not None:
            return y               # one token (of each sequence): the whole layer in one native call
        hp, n = self.hp, len(step.ids)
        rope, L = self.rope_of(il), layer_ops(x, w, scratch)
        h = L.norm(x, w["attn_norm"], hp.eps)
        q, k, v = L.linear_many(h, [w["attn_q"], w["attn_k"], w["attn_v"]], ("q", "k", "v"))
        q = L.rope(q, hp.n_head, hp.head_dim, rope, step.pos, "q", w["attn_q_norm"], hp.eps, hp.q_scale)
        k = L.rope(k, hp.n_head_kv, hp.head_dim, rope, step.pos, "k", w["attn_k_norm"], hp.eps)
        v = L.as_f32(v, "v").view(n, hp.n_head_kv, hp.head_dim_v)
        a = attention(q, k, v, kv.cache_of(il), il, step, 1.0, L.attention_out(n) if rows is None else None,
                      rows)
        if rows is not None:       # the last layer of a prompt: the rows that want logits go on
            if not rows:
                return x[:0]
            x, L = past_attention(x, w, scratch, rows)
        x, h = L.residual(x, L.linear(a, w["attn_output"], "o"), hp.eps, w_post=w["post_attention_norm"],
                          w_next=w["ffn_norm"])
        gate, up = L.linear_many(h, [w["ffn_gate"], w["ffn_up"]], ("gate", "up"))
        x, _ = L.residual(x, L.linear(L.glu(GELU, gate, up), w["ffn_down"], "o"), hp.eps, w_post=w["post_ffw_norm"])
        return x
