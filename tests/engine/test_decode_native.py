"""The one-call native decode layer (engine/decode_native.py, native/src/decode.c) against the torch
block it replaces, on tiny generated models and on both real ones.

Tolerances, and why:
- with the torch path's rules (the native default, `f32_attention(False)`) the native layer does the
  torch path's arithmetic: both round the query and the probabilities to an f16 / bf16 cache's type as
  llama.cpp does, and quantize the query to q8_0 blocks over a q8_0 cache as llama.cpp's flash
  attention does (the native dot is then integer, torch's a float product of the same values); the
  GEMVs are the same kernels on the same quantized x, so a layer's
  output may differ only by float noise in the norms, softmax and sums (bound rel 1e-4 on a tiny model's
  layer, measured <= 1.3e-5), except where that noise flips the q8 rounding of one activation value
  (see the real-model test);
- with `f32_attention(True)` (no rounding at all) an f16 query and f16 probabilities move the attention
  output by ~5e-4 relative (a bf16 one or a q8_0 query by ~4e-3), which the q8 quantization of the
  next GEMV's input turns into whole quantization steps on a few values: measured up to 2.3e-2 relative
  on a tiny random model's layer (bound 5e-2) and 1e-3..4e-3 on SmolLM2's (median bound 5e-3);
- the K and V rows stored into the cache are bitwise those of the torch path (same GEMVs, same RoPE,
  same conversion).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import decode_native, kernels
from engine.models.base import Step
from engine.quant import GGMLType
from engine.runtime import LoadOptions, Model
from engine.sampling import Sampler, SamplingParams
from tests.ggufgen import tiny_llama

pytestmark = pytest.mark.skipif(not decode_native.enabled(), reason="native library not built")

KV_TYPES = ("f16", "bf16", "q8_0")


def _decoder(m: Model) -> decode_native.NativeDecode:
    dec = decode_native.attach(m.net, m.kv)
    assert dec is not None and all(L is not None for L in dec.layers)
    return dec


def _decode_step(m: Model, token: int) -> Step:
    """The Step runtime._step builds for one more token of sequence 0 (cells claimed)."""
    pos = np.array([len(m.cached_tokens(0))], dtype=np.int64)
    slots = m.kv.find_slot(pos, 0)
    assert slots is not None
    names = [c.name for c in m.kv.caches]
    n_kv = {c.name: c.n_kv() for c in m.kv.caches}
    return Step([token], pos, 0, dict(zip(names, slots)), n_kv,
                {c.name: c.mask(pos, 0, n_kv[c.name]) for c in m.kv.caches})


def compare_layers(m: Model, token: int, monkeypatch) -> list[tuple[float, bool]]:
    """Each layer once through the torch block and once natively, on the torch path's input to that
    layer: (relative difference of the outputs, K/V rows stored bitwise equal) per layer."""
    net, step = m.net, _decode_step(m, token)
    x = net.embed([token])
    out = []
    with torch.inference_mode():
        for il in range(net.hp.n_layer):
            cache = m.kv.cache_of(il)
            cell = int(step.slots[cache.name][0])
            monkeypatch.setenv("CELLAR_NATIVE_DECODE", "0")
            ref = net.block(il, x.clone(), net.layers[il], step, m.kv, m.scratch)
            k_ref, v_ref = cache.k[il][cell].clone(), cache.v[il][cell].clone()
            cache.k[il][cell].zero_()
            cache.v[il][cell].zero_()
            monkeypatch.setenv("CELLAR_NATIVE_DECODE", "1")
            got = decode_native.layer(net, il, x.clone(), net.layers[il], step, m.kv)
            assert got is not None, f"layer {il}: the native path did not run"
            again = decode_native.layer(net, il, x.clone(), net.layers[il], step, m.kv)
            assert torch.equal(got, again), f"layer {il}: two runs differ (threads sharing the work buffer?)"
            same_kv = torch.equal(cache.k[il][cell], k_ref) and torch.equal(cache.v[il][cell], v_ref)
            out.append((float((got - ref).norm() / ref.norm()), same_kv))
            x = ref
    return out


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    # n_embd 256 so the k-quants (256-value super-blocks) fit; head_dim 32 so q8_0 K/V blocks stay in a head
    return {q: tiny_llama(d / f"{q.name}.gguf", qtype=q, n_layer=2, n_embd=256, n_head=8, n_head_kv=2, n_ff=512,
                          n_vocab=64, n_ctx=256, seed=int(q))
            for q in (GGMLType.F32, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K)}


@pytest.mark.parametrize("isa", ["best", "scalar"])
@pytest.mark.parametrize("kv_type", KV_TYPES)
@pytest.mark.parametrize("qtype", [GGMLType.F32, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K])
def test_tiny_llama_layer_matches_the_torch_block(tiny_models, qtype, kv_type, isa, monkeypatch):
    before = kernels.ISA
    m = Model.load(tiny_models[qtype], LoadOptions(ctx=64, threads=2, kv_type=kv_type, warmup=False))
    try:
        if isa == "scalar":
            kernels.set_isa("scalar")
        m.eval(list(range(3, 20)))                                   # 17 cells in the cache
        dec = _decoder(m)
        dec.f32_attention(False)                                   # the torch path's rules
        for rel, same_kv in compare_layers(m, 7, monkeypatch):
            assert same_kv
            assert rel < 1e-4
        m.reset()
        m.eval(list(range(3, 20)))
        dec.f32_attention(True)
        for rel, same_kv in compare_layers(m, 7, monkeypatch):
            assert same_kv
            assert rel < 5e-2
    finally:
        kernels.set_isa(before)
        m.close()


def test_switch_and_unsupported_steps_take_the_torch_path(tiny_models, monkeypatch):
    m = Model.load(tiny_models[GGMLType.Q8_0], LoadOptions(ctx=64, threads=2, warmup=False))
    try:
        m.eval([3, 4, 5])
        step = _decode_step(m, 6)
        x = m.net.embed([6])
        assert decode_native.layer(m.net, 0, x.clone(), m.net.layers[0], step, m.kv) is not None
        monkeypatch.setenv("CELLAR_NATIVE_DECODE", "0")
        assert decode_native.layer(m.net, 0, x.clone(), m.net.layers[0], step, m.kv) is None
        monkeypatch.setenv("CELLAR_NATIVE_DECODE", "1")
        two = Step([6, 7], np.array([4, 5]), 0, step.slots, step.n_kv, step.masks)
        assert decode_native.layer(m.net, 0, m.net.embed([6, 7]), m.net.layers[0], two, m.kv) is None
        m.kv.cache_of(0).k[0] = m.kv.cache_of(0).k[0].clone()        # rows replaced (a restore, an offload)
        assert decode_native.layer(m.net, 0, x.clone(), m.net.layers[0], step, m.kv) is None
    finally:
        m.close()


def _greedy(m: Model, ids: list[int], n: int) -> list[int]:
    m.reset()
    return m.generate(ids, n, Sampler(SamplingParams(temperature=0))).tokens


def _gap(m: Model, prefix: list[int], a: int, b: int) -> float:
    """|logit[a] - logit[b]| after prefix, on the torch path."""
    m.reset()
    logits = m.eval(prefix)
    return abs(float(logits[a] - logits[b]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_layers_and_greedy_match_the_torch_path(name, request, monkeypatch):
    path = request.getfixturevalue(f"{name}_path")
    m = Model.load(path, LoadOptions(ctx=1024, threads=2, warmup=False))
    try:
        prompt = m.tokenizer.encode("The capital of France is Paris. The capital of Germany is", add_special=True)
        m.eval(prompt)
        dec = _decoder(m)
        dec.f32_attention(False)                           # f16 cache: the torch path's rules too
        res = compare_layers(m, prompt[-1], monkeypatch)
        assert all(same for _, same in res)
        # float noise in the softmax and norms flips the q8 rounding of an activation value now and then,
        # which moves that layer's output by a whole quantization step (SmolLM2: one layer in 30 by 1.3e-3;
        # Gemma-3 past its window: one layer in 18 by 5e-2, once in three runs); the others stay within
        # float noise. A wrong head, mask or rotation moves every layer by far more than 1e-5.
        rels = sorted(r for r, _ in res)
        assert rels[len(rels) * 3 // 4] < 1e-5 and rels[-1] < 0.1, res
        dec.f32_attention(True)
        m.reset()
        m.eval(prompt)
        res = compare_layers(m, prompt[-1], monkeypatch)
        assert all(same for _, same in res)
        rels = sorted(r for r, _ in res)                   # not rounding moves every layer a little
        assert rels[len(rels) // 2] < 5e-3 and rels[-1] < 0.1, res

        monkeypatch.setenv("CELLAR_NATIVE_DECODE", "1")
        native = _greedy(m, prompt, 40)
        monkeypatch.setenv("CELLAR_NATIVE_DECODE", "0")
        torch_path = _greedy(m, prompt, 40)
        if native != torch_path:                     # allowed only at a near-tie of the torch path's logits
            i = next(i for i, (a, b) in enumerate(zip(native, torch_path)) if a != b)
            gap = _gap(m, prompt + torch_path[:i], native[i], torch_path[i])
            assert gap < 0.3, (i, gap, native, torch_path)
    finally:
        m.close()


@pytest.mark.slow
@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_gemma3_past_the_sliding_window(gemma3_path, kv_type, monkeypatch):
    """Past 512 tokens the sliding-window layers must skip the cells behind the window (the step's mask
    hides some of the cells in use) and read the reused ones: every layer still matches the torch block."""
    m = Model.load(gemma3_path, LoadOptions(ctx=1024, threads=2, kv_type=kv_type, warmup=False))
    try:
        ids = m.tokenizer.encode("The history of the printing press. " * 90, add_special=True)[:600]
        assert len(ids) == 600
        m.eval(ids)
        dec = _decoder(m)
        dec.f32_attention(False)                           # the torch path's rules
        swa = next(c for c in m.kv.caches if c.swa_window)
        pos = np.array([600])
        hidden = torch.isinf(swa.mask(pos, 0, swa.n_kv())).sum()
        assert hidden > 0                                  # cells in use that the window hides
        res = compare_layers(m, ids[100], monkeypatch)
        assert all(same for _, same in res)
        rels = sorted(r for r, _ in res)                   # see the real-model test for the bounds
        # q8_0: the native f32 mode computes GELU by its formula, the torch path by ggml's f16 table
        tight = 5e-3 if kv_type == "q8_0" else 1e-5
        assert rels[len(rels) * 3 // 4] < tight and rels[-1] < 0.1, res
    finally:
        m.close()


@pytest.mark.parametrize("isa", ["best", "avx2"])
@pytest.mark.parametrize("kv_type", ["f16", "bf16"])
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_attention_over_many_cells_is_the_one_pass_attentions_bits(name, kv_type, isa, request):
    """Past 32 or 256 visible cells the decode layer's attention runs in three passes shared between the
    threads (scores over chunks of cells with each K row read once for the query heads that share it, the
    softmax per head, V sums per K/V head and column chunk); below, one pass per query head. The same
    operations in the same order: the same logits, bit for bit, on one thread and on two."""
    before = kernels.ISA
    if isa == "avx2" and kernels.set_isa("avx2") != "avx2":
        kernels.set_isa(before)
        pytest.skip("this CPU has no AVX2")
    path = request.getfixturevalue(f"{name}_path")
    many = decode_native.set_many_cells(0)
    try:
        runs = []
        for threads, many_cells in ((2, 10 ** 9), (2, 0), (1, 256)):     # one pass; three; three alone
            decode_native.set_many_cells(many_cells)
            m = Model.load(path, LoadOptions(ctx=1024, threads=threads, kv_type=kv_type, warmup=False))
            try:
                ids = m.tokenizer.encode("The history of the printing press. " * 120, add_special=True)[:620]
                m.eval(ids[:600])                          # 600 cells
                runs.append([m.eval([t]).clone() for t in ids[600:604]])
            finally:
                m.close()
        for one, three, alone in zip(*runs):
            assert torch.equal(one, three) and torch.equal(three, alone)
    finally:
        decode_native.set_many_cells(many)
        kernels.set_isa(before)
        kernels.set_threads(2)
