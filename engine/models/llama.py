"""Llama (SmolLM2 and kin): RMSNorm, RoPE on adjacent pairs, grouped-query attention, SwiGLU.

GGUF's llama conversion permutes Q and K rows so that ggml's "normal" RoPE (pairs x[2i], x[2i+1])
gives the Hugging Face model's rotate-half result.
"""
from __future__ import annotations

from engine.kv_cache import KVMemory
from engine.models.base import Hparams, Step, Transformer, attention, inv_sqrt, meta, rms_norm, swiglu
from engine.ops import Scratch, linear


class Llama(Transformer):
    arch = "llama"
    norm_names = ("attn_norm", "ffn_norm")

    @classmethod
    def hparams(cls, g) -> Hparams:
        a = cls.arch
        n_embd = meta(g, f"{a}.embedding_length", int)
        n_head = meta(g, f"{a}.attention.head_count", int)
        head_dim = int(g.get(f"{a}.attention.key_length", n_embd // n_head))
        n_vocab = int(g.get(f"{a}.vocab_size", g.tensors["token_embd.weight"].shape[0]
                            if "token_embd.weight" in g.tensors else 0))
        return Hparams(
            n_vocab=n_vocab, n_embd=n_embd, n_layer=meta(g, f"{a}.block_count", int), n_head=n_head,
            n_head_kv=int(g.get(f"{a}.attention.head_count_kv", n_head)), head_dim=head_dim,
            head_dim_v=int(g.get(f"{a}.attention.value_length", head_dim)),
            n_ff=meta(g, f"{a}.feed_forward_length", int),
            eps=meta(g, f"{a}.attention.layer_norm_rms_epsilon", float),
            n_rot=int(g.get(f"{a}.rope.dimension_count", head_dim)),
            rope_base=float(g.get(f"{a}.rope.freq_base", 10000.0)), rope_neox=False,
            n_ctx_train=int(g.get(f"{a}.context_length", 4096)))

    def block(self, il: int, x, step: Step, kv: KVMemory, scratch: Scratch):
        hp, w, n = self.hp, self.layers[il], len(step.ids)
        rope = self.rope_of(il)
        h = rms_norm(x, w["attn_norm"], hp.eps)
        q = linear(h, w["attn_q"], scratch).view(n, hp.n_head, hp.head_dim)
        k = linear(h, w["attn_k"], scratch).view(n, hp.n_head_kv, hp.head_dim)
        v = linear(h, w["attn_v"], scratch).view(n, hp.n_head_kv, hp.head_dim_v)
        q, k = rope(q, step.pos), rope(k, step.pos)
        a = attention(q, k, v, kv.cache_of(il), il, step, inv_sqrt(hp.head_dim))
        x = x + linear(a, w["attn_output"], scratch)
        return x + swiglu(rms_norm(x, w["ffn_norm"], hp.eps), w, scratch)
