"""Qwen3 against llama.cpp on a tiny model with random weights (tests/data/tiny_refs.json, made by
tools/make_tiny_refs.py): per-head Q / K RMSNorm before neox RoPE, a head size of its own (32, where
n_embd / n_head is 16), the output head tied to the embeddings. The prompt as one batch and then single
tokens, on the native decode layer and on the Python one."""
from __future__ import annotations

import numpy as np
import pytest

from tests.engine.test_rope_scaling import REFS, _logits, plain  # noqa: F401  (plain is a fixture)
from tests.ggufgen import tiny_llama

pytest.importorskip("engine.runtime")

QWEN3 = {"arch": "qwen3", "qk_norm": True, "head_dim": 32, "tied": True}


@pytest.mark.parametrize("native_decode", ["1", "0"])
def test_qwen3_matches_llama_cpp(tmp_path, monkeypatch, plain, native_decode):  # noqa: F811
    monkeypatch.setenv("CELLAR_NATIVE_DECODE", native_decode)
    path = tiny_llama(tmp_path / "qwen3.gguf", seed=7, **QWEN3)
    ref = np.asarray(REFS["cases"]["qwen3"], dtype=np.float32)
    ours = _logits(path)
    _, agreement = plain
    err = float(np.abs(ours - ref).max())
    assert err <= 2 * agreement, (err, agreement)

    def no_qk_norm(m):             # the same model with its Q / K norm weights at 1: far from llama.cpp
        for layer in m.net.layers:
            layer["attn_q_norm"].fill_(1.0)
            layer["attn_k_norm"].fill_(1.0)
    assert float(np.abs(_logits(path, no_qk_norm) - ref).max()) > 10 * agreement


def test_qwen3_shape_and_decode_path(tmp_path):
    from engine import decode_native
    from engine.runtime import LoadOptions, Model
    m = Model.load(str(tiny_llama(tmp_path / "q.gguf", seed=7, **QWEN3)), LoadOptions(ctx=64, threads=2,
                                                                                        warmup=False))
    try:
        hp = m.net.hp
        assert (m.arch, hp.head_dim, hp.rope_neox, m.net.output is m.net.tok_embd) == ("qwen3", 32, True, True)
        assert decode_native._flags(m.net) == decode_native.DEC_NEOX | decode_native.DEC_QKNORM
    finally:
        m.close()
