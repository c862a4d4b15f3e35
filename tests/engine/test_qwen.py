"""Qwen3 and Qwen2 against llama.cpp on tiny models with random weights (tests/data/tiny_refs.json, made
by tools/make_tiny_refs.py). Qwen3: per-head Q / K RMSNorm before neox RoPE, a head size of its own (32,
where n_embd / n_head is 16), the output head tied to the embeddings. Qwen2: biases on the Q, K and V
products, neox RoPE. The prompt as one batch and then single tokens, on the native decode layer and on
the Python one; the same model with the feature taken out (norms at 1, biases at 0) lands far away."""
from __future__ import annotations

import numpy as np
import pytest

from tests.engine.test_rope_scaling import REFS, _logits, plain  # noqa: F401  (plain is a fixture)
from tests.ggufgen import tiny_llama

pytest.importorskip("engine.runtime")

MODELS = {
    "qwen3": ({"arch": "qwen3", "qk_norm": True, "head_dim": 32, "tied": True}, ("attn_q_norm", "attn_k_norm"), 1.0),
    "qwen2": ({"arch": "qwen2", "qkv_bias": True, "tied": True}, ("attn_q.bias", "attn_k.bias", "attn_v.bias"), 0.0),
}


@pytest.mark.parametrize("native_decode", ["1", "0"])
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_matches_llama_cpp(tmp_path, monkeypatch, plain, arch, native_decode):  # noqa: F811
    monkeypatch.setenv("CELLAR_NATIVE_DECODE", native_decode)
    kw, names, neutral = MODELS[arch]
    path = tiny_llama(tmp_path / f"{arch}.gguf", seed=7, **kw)
    ref = np.asarray(REFS["cases"][arch], dtype=np.float32)
    _, agreement = plain
    err = float(np.abs(_logits(path) - ref).max())
    assert err <= 2 * agreement, (err, agreement)

    def without(m):
        for layer in m.net.layers:
            for n in names:
                layer[n].fill_(neutral)
    assert float(np.abs(_logits(path, without) - ref).max()) > 10 * agreement


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_shape_and_decode_path(tmp_path, arch):
    from engine import decode_native
    from engine.runtime import LoadOptions, Model
    kw, _, _ = MODELS[arch]
    m = Model.load(str(tiny_llama(tmp_path / "m.gguf", seed=7, **kw)), LoadOptions(ctx=64, threads=2, warmup=False))
    try:
        hp = m.net.hp
        assert (m.arch, hp.rope_neox, m.net.output is m.net.tok_embd) == (arch, True, True)
        qk = decode_native.DEC_QKNORM if arch == "qwen3" else 0
        assert decode_native._flags(m.net) == decode_native.DEC_NEOX | qk
        if decode_native.enabled():                # every layer runs natively, biases included
            assert all(L is not None for L in decode_native.NativeDecode(m.net, m.kv).layers)
        assert hp.head_dim == (32 if arch == "qwen3" else 16)
    finally:
        m.close()
