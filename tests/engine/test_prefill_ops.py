"""The batched layer's native steps (engine/prefill.py, native/src/prefill.c) against llama.cpp's
arithmetic written out in numpy, and against the torch steps they replace.

- RMSNorm: llama.cpp sums each row's f32 squares in double in order (numpy's add.accumulate is that
  order), mean rounded to f32, 1.0f / sqrtf(mean + eps), (x * scale) * w: the native pass gives exactly
  those bits, in f32 and rounded to bf16; torch's sum takes another order (the same bits here);
- RoPE: the native pass rounds x0*cos - x1*sin once (an FMA, as ggml's compiled loop), torch's double
  arithmetic twice: equal but for rare one-ulp cases;
- GELU: ggml's f16 table in both, bitwise; SiLU: ggml's exp polynomial against torch's exp, a few ulps;
- attention's mask and rounding: the bits of torch's mask path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import kernels, ops, prefill
from engine.models.base import Rope, geglu_into, rms_norm
from engine.runtime import LoadOptions, Model
from engine.quant import GGMLType
from tests.ggufgen import tiny_llama

pytestmark = pytest.mark.skipif(not kernels.has_prefill_ops(), reason="native library not built")
EPS = 1e-5


def ref_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """llama.cpp's rms_norm then mul, row by row."""
    sq = (x * x).astype(np.float64)
    s = np.add.accumulate(sq, axis=-1)[..., -1:]
    mean = (s / x.shape[-1]).astype(np.float32)
    scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
    return (x * scale) * w


def rows(n: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cols, generator=g) * torch.rand(n, 1, generator=g) * 4


def ops_for(bufs_dtype: torch.dtype, n: int, hp) -> prefill.NativeOps:
    sc = ops.Scratch(16, bufs_dtype)
    sc.ubatch = prefill.UbatchBuffers(hp, n, bufs_dtype)
    return prefill.NativeOps(sc.ubatch, n, sc)


class HP:
    n_embd, n_head, n_head_kv, head_dim, head_dim_v, n_ff = 576, 9, 3, 64, 64, 1536


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_llamacpps_bits(dtype):
    n = 67
    x, w = rows(n, HP.n_embd), rows(1, HP.n_embd, 1)[0]
    got = ops_for(dtype, n, HP).norm(x, w, EPS)
    want = torch.from_numpy(ref_norm(x.numpy(), w.numpy(), EPS)).to(dtype)
    assert torch.equal(got, want)
    assert torch.equal(rms_norm(x, w, EPS).to(dtype), want)          # torch's order: the same bits here


@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_adds_then_norms_as_llamacpp(dtype, post):
    n = 33
    x, y = rows(n, HP.n_embd), rows(n, HP.n_embd, 2).to(dtype)
    w1, w2 = rows(1, HP.n_embd, 3)[0], rows(1, HP.n_embd, 4)[0]
    L = ops_for(dtype, n, HP)
    yf = y.float().numpy()
    if post:
        yf = ref_norm(yf, w1.numpy(), EPS)
    want_x = x.numpy() + yf
    want_h = torch.from_numpy(ref_norm(want_x, w2.numpy(), EPS)).to(dtype)
    got_x, got_h = L.residual(x.clone(), y, EPS, w_post=w1 if post else None, w_next=w2)
    assert torch.equal(got_x, torch.from_numpy(want_x))
    assert torch.equal(got_h, want_h)
    got_x, none = L.residual(x.clone(), y, EPS, w_post=w1 if post else None)
    assert none is None and torch.equal(got_x, torch.from_numpy(want_x))


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_matches_the_torch_rope(neox, qk_norm):
    n, heads, hd = 40, HP.n_head_kv, HP.head_dim
    rope = Rope(hd, 10000.0, neox, 256)
    pos = np.arange(100, 100 + n, dtype=np.int64)
    t = rows(n, heads * hd, 5).to(torch.bfloat16)
    wn = rows(1, hd, 6)[0] if qk_norm else None
    L = ops_for(torch.bfloat16, n, HP)
    got = L.rope(t, heads, hd, rope, pos, "k", wn, EPS, 0.125 if qk_norm else 1.0).clone()
    want = prefill.TorchOps(None).rope(t.float(), heads, hd, rope, pos, "k", wn, EPS, 0.125 if qk_norm else 1.0)
    d = ulps(got.contiguous(), want.contiguous())
    assert int(d.max()) <= 1 and int((d > 0).sum()) <= got.numel() // 1000


def test_geglu_is_bitwise_the_table_and_silu_within_ulps():
    n = 20
    g, u = rows(n, HP.n_ff, 7), rows(n, HP.n_ff, 8)
    L = ops_for(torch.float32, n, HP)
    got = L.glu(prefill.GELU, g.clone(), u)
    assert torch.equal(got, geglu_into(g.clone(), u))
    got = L.glu(prefill.SILU, g.clone(), u)
    want = F.silu(g) * u
    assert int(ulps(got, want).max()) <= 4
    gb, ub = g.to(torch.bfloat16), u.to(torch.bfloat16)
    got = ops_for(torch.bfloat16, n, HP).glu(prefill.SILU, gb.clone(), ub)
    assert got.dtype == torch.bfloat16
    assert float((got.float() - (F.silu(gb.float()) * ub.float())).abs().max()) <= 0.01 * float(want.abs().max())


def test_geglu_rows_are_the_table_on_every_half_and_every_isa():
    """The SIMD GEGLU row (hardware f32 -> f16 rounding, a gather from the table) against the scalar one on
    every finite f16 value, the midpoints between neighbours (where rounding to nearest even decides) and
    the +-10 edges, on each instruction set the CPU has."""
    h = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    h = h[torch.isfinite(h)].sort().values
    x = torch.cat([h, (h[:-1] + h[1:]) / 2, torch.tensor([-10.0, 10.0, -10.0001, 9.9999, 0.0, -0.0])])
    x = x[: x.numel() // 64 * 64].reshape(-1, 64).contiguous()
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    want = geglu_into(x.clone(), u)                      # the one-value function, scalar
    before = kernels.ISA
    try:
        for isa in ("avx512-vnni", "avx512", "avx2", "scalar"):
            if kernels.set_isa(isa) != isa:
                continue
            got = ops_for(torch.float32, x.shape[0], HP).glu(prefill.GELU, x.clone(), u)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), isa
    finally:
        kernels.set_isa(before)


@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("pf") / "tiny.gguf", qtype=GGMLType.Q8_0, n_embd=128, n_ff=256,
                      n_head=4, n_head_kv=2)


@pytest.mark.parametrize("scratch", ["f32", "bf16"])
def test_native_steps_give_the_torch_steps_logits(tiny_q8, scratch, monkeypatch):
    """A 40-token prompt through the native steps and through torch's (the library's ops hidden)."""
    monkeypatch.setattr(ops, "SCRATCH_DTYPE", torch.float32 if scratch == "f32" else torch.bfloat16)
    ids = [1] + [5 + (i * 7) % 50 for i in range(39)]
    out = {}
    for native in (True, False):
        monkeypatch.setattr(kernels, "has_prefill_ops", lambda native=native: native)
        m = Model.load(tiny_q8, LoadOptions(ctx=64, threads=2, warmup=False))
        try:
            assert (m.scratch.ubatch is not None) == native
            out[native] = m.eval(ids)
        finally:
            m.close()
    torch.testing.assert_close(out[True], out[False], rtol=1e-3, atol=1e-3)


def test_every_isa_gives_the_same_bits():
    """The SIMD passes and the scalar build (ggml's exp in fmaf, the same sums) agree bit for bit."""
    n = 24
    x, w = rows(n, HP.n_embd, 9), rows(1, HP.n_embd, 10)[0]
    g, u = rows(n, HP.n_ff, 11) * 30, rows(n, HP.n_ff, 12)         # SiLU's exp far out on both sides
    rope = Rope(HP.head_dim, 10000.0, False, 64)
    pos = np.arange(n, dtype=np.int64)
    t = rows(n, HP.n_head * HP.head_dim, 13)

    def run():
        L = ops_for(torch.float32, n, HP)
        return (L.norm(x, w, EPS).clone(), L.glu(prefill.SILU, g.clone(), u).clone(),
                L.rope(t, HP.n_head, HP.head_dim, rope, pos, "q").clone())
    before = kernels.ISA
    try:
        best = run()
        kernels.set_isa("scalar")
        scalar = run()
    finally:
        kernels.set_isa(before)
    for a, b in zip(best, scalar):
        assert torch.equal(a, b)


@pytest.mark.parametrize("window,n,n_kv,seqs", [(0, 200, 200, 1), (64, 150, 300, 1), (0, 130, 160, 2)])
def test_native_masked_softmax_attention_matches_the_torch_one(window, n, n_kv, seqs):
    """ops.attend over a CellMask (the native mask and rounding around torch's softmax) gives the f32 mask
    path's bits, on a causal prompt, a sliding window, and two sequences interleaved in one ubatch."""
    from engine.kv_cache import CellMask, KVCache
    heads, hkv, d = 4, 2, 32
    c = KVCache("g", [0], 512, hkv * d, hkv * d, swa_window=window)
    seq = np.arange(n_kv) % seqs
    pos = np.zeros(n_kv, dtype=np.int64)
    for s_ in range(seqs):
        pos[seq == s_] = np.arange(int((seq == s_).sum()))
    c.pos[:n_kv], c.seq[:n_kv] = pos, 1 << seq
    rows_ = np.arange(n_kv - n, n_kv)
    m = CellMask(c, pos[rows_], seq[rows_] if seqs > 1 else 0, n_kv)
    g = torch.Generator().manual_seed(3)
    q, K, V = (torch.randn(n, heads, d, generator=g), torch.randn(n_kv, hkv, d, generator=g),
               torch.randn(n_kv, hkv, d, generator=g))
    q *= 300          # the query's values large enough that rounding to bf16 or f16 moves most of them
    for rounds in (torch.float16, torch.bfloat16):     # the query rounded block by block, natively
        assert torch.equal(ops.attend(q, K, V, m, 0.2, rounds), ops.attend(q, K, V, m.full(), 0.2, rounds))
    q /= 300
    got = ops.attend(q, K, V, m, 0.2, torch.float16)
    want = ops.attend(q, K, V, m.full(), 0.2, torch.float16)
    assert torch.equal(got, want)
    out = torch.zeros(n, heads * d, dtype=torch.bfloat16)
    assert ops.attend(q, K, V, m, 0.2, torch.float16, out) is out
    assert torch.equal(out, got.to(torch.bfloat16))


def test_rope_tables_are_the_c_librarys_cosf_and_sinf():
    """The RoPE cos/sin tables hold what cosf / sinf give (ggml's rope cache calls them), one value at a
    time through ctypes, including the angles where the rounded double differs from the library's float
    (glibc's cosf is not correctly rounded everywhere: Gemma-3's table has ~56 such values of 262144)."""
    from engine.models import base
    if kernels.trig_f32(np.zeros(1, np.float32)) is None or base._LIBM is None:
        pytest.skip("needs the native library and the C math library")
    rope = Rope(256, 10000.0, True, 2048)
    theta, ang = np.arange(2048).astype(np.float32), np.empty((2048, 128), np.float32)
    for i in range(128):
        ang[:, i] = theta
        theta = theta * rope.scale
    shortcut = base._trig_f32(ang, "cosf")
    rng = np.random.default_rng(0)
    flat = ang.ravel()
    picks = np.union1d(np.flatnonzero(shortcut.ravel() != rope.cos.numpy().ravel()), rng.choice(flat.size, 3000))
    libm = base._LIBM
    want_c = np.array([libm.cosf(float(flat[k])) for k in picks], np.float32)
    want_s = np.array([libm.sinf(float(flat[k])) for k in picks], np.float32)
    assert np.array_equal(rope.cos.numpy().ravel()[picks], want_c)
    assert np.array_equal(rope.sin.numpy().ravel()[picks], want_s)
