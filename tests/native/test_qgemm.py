"""The int8 prefill GEMM (native/src/qgemm.c: AVX-512 VNNI, or AVX2's vpmaddubsw): against a float64
oracle within the q8 activation rounding, on every type it takes, at batch sizes that leave partial
tiles, with 1 and 2 threads; bf16 in and out; several weights in one call; strided outputs; bitwise
independent of the thread split and of the kernel (VNNI, AVX-512 and AVX2 builds give the same bits);
bad input refused; and the switches that send a batch to it (engine/ops.py, engine/cpu_features.py).

The native tests skip where the library or the CPU has no int8 GEMM (no AVX2, CELLAR_ISA=scalar,
CELLAR_NO_NATIVE=1); the cpu_features tests are pure Python and run everywhere."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import cpu_features, kernels, ops
from engine.quant import BLOCK, GGMLType, QTensor, dequantize_torch
from tests.native.blocks import F16_FIELDS, random_qtensor, reference_weights, rel_err


def _takes(qtype: GGMLType, rows: int = 32, cols: int = 256) -> bool:
    return kernels.AVAILABLE and kernels.qgemm_supported(random_qtensor(qtype, rows, cols))


HAS_QGEMM = _takes(GGMLType.Q4_0, 32, 32)
needs_qgemm = pytest.mark.skipif(
    not HAS_QGEMM,
    reason="no int8 GEMM here: native library not built (python -m native.build), CELLAR_NO_NATIVE set, "
           "or the CPU / CELLAR_ISA has no AVX2")

# the quantized types the int8 GEMM takes on this library (Q6_K where it has it)
QG_TYPES = [q for q in F16_FIELDS if _takes(q)]
REQUIRED = {GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q4_K, GGMLType.Q5_K,
            GGMLType.Q6_K} | ({GGMLType.Q8_0} if kernels.ISA == "avx512-vnni" else set())
# a second type for the several-weight tests: Q8_0 where the kernel takes it (VNNI), else Q5_0
OTHER = GGMLType.Q8_0 if GGMLType.Q8_0 in REQUIRED else GGMLType.Q5_0
ROWS_FOR_N = {1: 32, 3: 96, 9: 64, 37: 160, 130: 64}      # rows: multiples of 32 (whole panels)


@pytest.fixture
def best_isa():
    kernels.set_isa(kernels.best_isa())
    yield kernels.ISA
    kernels.set_isa(kernels.best_isa())


def _x(n: int, cols: int, seed: int) -> torch.Tensor:
    x = np.random.default_rng(seed).standard_normal((n, cols)).astype(np.float32)
    x[n // 2] *= 40.0                  # rows of very different scales in one tile
    return torch.from_numpy(x)


def _x_dc(n: int, cols: int, seed: int) -> torch.Tensor:
    """Activations with a common offset (every block's int sum large), as after a norm with a bias."""
    return torch.from_numpy((1.0 + 0.05 * np.random.default_rng(seed).standard_normal((n, cols))).astype(np.float32))


def _cols(qtype: GGMLType) -> int:
    per = BLOCK[qtype][0]
    return per * (3 if per == 256 else 7)          # whole blocks, not a power of two


def q8_rounded(x: torch.Tensor) -> np.ndarray:
    """float64 x as the kernel's activation quantization leaves it: per 32 values d = amax / 127 (f32),
    q = rint(x * (127 / amax)) in f32 (round half to even), d stored as f16; x ~= f16(d) * q."""
    v = x.float().numpy()
    n, cols = v.shape
    b = v.reshape(n, cols // 32, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True).astype(np.float32)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint((b * inv).astype(np.float32))
    return (q.astype(np.float64) * d.astype(np.float16).astype(np.float64)).reshape(n, cols)


# ---- which types ------------------------------------------------------------------------------------

@needs_qgemm
def test_types_taken_are_the_listed_ones(monkeypatch):
    """The library takes the 32-value-block types, Q4_K, Q5_K and Q6_K (Q8_0 with VNNI only: its bytes
    would saturate vpmaddubsw's int16 pair sums), exactly those the memory planner and ops think it does
    (cpu_features.INT8_PREFILL_TYPES / INT8_AVX2_TYPES, int8_takes)."""
    # cpu_features follows CELLAR_ISA; other tests' fixtures may have moved the library's path (set_isa)
    monkeypatch.setenv("CELLAR_ISA", kernels.ISA)
    required = REQUIRED - {GGMLType.Q8_0} | ({GGMLType.Q8_0} if kernels.ISA == "avx512-vnni" else set())
    taken = [q for q in F16_FIELDS if _takes(q)]
    assert required <= set(taken)
    listed = (cpu_features.INT8_PREFILL_TYPES if cpu_features.int8_kernel() == "vnni"
              else cpu_features.INT8_AVX2_TYPES)
    assert {int(q) for q in taken} == set(listed)
    for q in F16_FIELDS:
        per = BLOCK[q][0]
        for rows, cols in ((32, per), (64, 2 * per), (33, per), (16, per), (96, 3 * per)):
            w = random_qtensor(q, rows, cols)
            assert kernels.qgemm_supported(w) == cpu_features.int8_takes(int(q), (rows, cols)), (q.name, rows, cols)
    for q in taken:   # a super-block type needs whole 256-value super-blocks
        w = QTensor("odd", q, (32, 288), np.zeros(1, dtype=np.uint8))
        assert kernels.qgemm_supported(w) == (BLOCK[q][0] == 32), q.name


# ---- accuracy ---------------------------------------------------------------------------------------

@needs_qgemm
@pytest.mark.parametrize("qtype", QG_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", sorted(ROWS_FOR_N))
def test_qgemm_against_float64_oracle(qtype, n, threads):
    rows, cols = ROWS_FOR_N[n], _cols(qtype)
    w = random_qtensor(qtype, rows, cols, seed=rows * 31 + n + int(qtype))
    x = _x(n, cols, seed=n)
    got = kernels.qgemm_many([w], x)
    assert len(got) == 1 and got[0].shape == (n, rows) and got[0].dtype == torch.float32
    y = got[0].double().numpy()
    W = reference_weights(w)
    exact = x.double().numpy() @ W.T
    err = rel_err(y, exact)
    # the error the q8 activation rounding alone makes (blocks of 32, as the kernel rounds x)
    base = rel_err(q8_rounded(x) @ W.T, exact)
    assert err <= 1.5 * base + 1e-4, f"{qtype.name}: {err:.3e} vs the q8 rounding's {base:.3e}"
    if BLOCK[qtype][0] == 32:
        # the GEMV quantizes x in the same blocks of 32 (for the k-quants it takes 256-value blocks,
        # a different rounding: the emulation above stands in for it)
        gemv_err = rel_err(kernels.gemv(w, x).double().numpy(), exact)
        assert err <= 1.5 * gemv_err + 1e-4, f"{qtype.name}: {err:.3e} vs the GEMV's {gemv_err:.3e}"
    assert err < 0.02, f"{qtype.name}: {err:.3e}"


@needs_qgemm
@pytest.mark.parametrize("qtype", QG_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("xkind", ["randn", "offset"])
def test_qgemm_is_the_product_of_the_q8_rounded_x(qtype, xkind):
    """Beyond rounding x to q8 the kernel only adds f32 rounding (and, for Q4_1 / Q5_1 / Q4_K / Q5_K
    whose blocks have a real offset, the f16 rounding of s = d * sum(q), as llama.cpp's q8_1 and the
    GEMV do): within 2e-4 of the float64 product of the q8-rounded x. Q4_0 / Q5_0 / Q8_0 / Q6_K take
    their whole-number offsets (-8d, -16d, -128d, -32d) in the integer sums; through o * f16(s) the f16
    rounding of s was multiplied by 8..128 (1e-3..4e-3 of the largest output on x with a common offset,
    1.5-1.8x the GEMV's whole error), which the 'offset' case catches."""
    rows, cols, n = 64, _cols(qtype), 37
    w = random_qtensor(qtype, rows, cols, seed=7 + int(qtype))
    x = (_x if xkind == "randn" else _x_dc)(n, cols, seed=3)
    y = kernels.qgemm_many([w], x)[0].double().numpy()
    W = reference_weights(w)
    err = rel_err(y, q8_rounded(x) @ W.T)
    assert err < 2e-4, f"{qtype.name} {xkind}: {err:.3e} from the q8-rounded product"


# ---- bf16 in and out ------------------------------------------------------------------------------

@needs_qgemm
@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q5_1, GGMLType.Q4_K], ids=lambda t: t.name)
def test_bf16_in_and_out(qtype, threads):
    rows, cols, n = 96, _cols(qtype), 37
    ws = [random_qtensor(qtype, rows, cols, seed=1), random_qtensor(OTHER, 32, cols, seed=2)]
    x = _x(n, cols, seed=4)
    xb = x.bfloat16()
    f32_of_x = kernels.qgemm_many(ws, x)
    f32_of_xb = kernels.qgemm_many(ws, xb.float())
    # bf16 x: read exactly as its f32 value
    got = kernels.qgemm_many(ws, xb)
    for g, r in zip(got, f32_of_xb):
        assert g.dtype == torch.float32 and torch.equal(g, r)
    # bf16 outputs: the f32 outputs rounded to nearest even
    outs = [torch.full((n, w.rows), 7.0, dtype=torch.bfloat16) for w in ws]
    ret = kernels.qgemm_many(ws, x, outs)
    for o, rt, r in zip(outs, ret, f32_of_x):
        assert rt is o
        assert torch.equal(o, r.bfloat16()), f"{int((o != r.bfloat16()).sum())} outputs differ"
    outs = [torch.empty((n, w.rows), dtype=torch.bfloat16) for w in ws]
    kernels.qgemm_many(ws, xb, outs)
    for o, r in zip(outs, f32_of_xb):
        assert torch.equal(o, r.bfloat16()), f"{int((o != r.bfloat16()).sum())} outputs differ"
    # preallocated f32 outputs from bf16 x
    outs = [torch.full((n, w.rows), 7.0) for w in ws]
    kernels.qgemm_many(ws, xb, outs)
    for o, r in zip(outs, f32_of_xb):
        assert torch.equal(o, r)


# ---- several weights, strides ---------------------------------------------------------------------

SPECS = [(GGMLType.Q4_1, 96), (OTHER, 32), (GGMLType.Q4_K, 64)]


@needs_qgemm
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_many_weights_equal_one_call_each_and_strided_outputs(out_dtype, threads):
    cols, n = 512, 70
    ws = [random_qtensor(q, r, cols, seed=i) for i, (q, r) in enumerate(SPECS)]
    x = _x(n, cols, seed=11)
    one = [kernels.qgemm_many([w], x)[0].to(out_dtype) for w in ws]
    got = kernels.qgemm_many(ws, x, [torch.empty(n, w.rows, dtype=out_dtype) for w in ws])
    for w, g, o in zip(ws, got, one):
        assert g.shape == (n, w.rows)
        assert torch.equal(g, o), w.name
    # outputs that are column slices of wider tensors (rows further apart than the width)
    sentinel = -12345.0
    bigs = [torch.full((n, w.rows + 40), sentinel, dtype=out_dtype) for w in ws]
    outs = [b[:, 7:7 + w.rows] for b, w in zip(bigs, ws)]
    assert all(o.stride(0) == w.rows + 40 for o, w in zip(outs, ws))
    kernels.qgemm_many(ws, x, outs)
    for w, b, o in zip(ws, bigs, one):
        assert torch.equal(b[:, 7:7 + w.rows], o), w.name
        assert bool((b[:, :7] == sentinel).all()) and bool((b[:, 7 + w.rows:] == sentinel).all()), \
            f"{w.name}: wrote outside its columns"
    # x with rows further apart than its width
    wide = torch.zeros(n, cols + 64)
    wide[:, :cols] = x
    for g, o in zip(kernels.qgemm_many(ws, wide[:, :cols]), one):
        assert torch.equal(g.to(out_dtype), o)


@needs_qgemm
def test_threads_do_not_change_the_result():
    cols, n = 512, 130
    ws = [random_qtensor(q, r, cols, seed=i) for i, (q, r) in
          enumerate(SPECS + [(GGMLType.Q5_0, 256), (GGMLType.Q5_K, 160)])]
    x = _x(n, cols, seed=12)
    before = kernels.get_threads()
    try:
        kernels.set_threads(1)
        ref = kernels.qgemm_many(ws, x)
        for t in (2, 3):
            kernels.set_threads(t)
            for _ in range(2):
                for w, g, r in zip(ws, kernels.qgemm_many(ws, x), ref):
                    assert torch.equal(g, r), f"{w.name}: {t} threads, {int((g != r).sum())} outputs differ"
    finally:
        kernels.set_threads(before)


@needs_qgemm
def test_empty_batch_and_buffer_reuse():
    w = random_qtensor(GGMLType.Q4_1, 64, 1024, seed=1)
    assert kernels.qgemm_many([w], torch.empty(0, 1024))[0].shape == (0, 64)
    kernels.qgemm_many([w], _x(512, 1024, seed=1))
    size = kernels.qgemm_buffer_bytes()
    assert size >= 512 * 1024                     # at least a byte per quantized value of x
    kernels.qgemm_many([w], _x(100, 1024, seed=2))
    kernels.qgemm_many([w], _x(512, 1024, seed=3))
    assert kernels.qgemm_buffer_bytes() == size


# ---- bad input --------------------------------------------------------------------------------------

@needs_qgemm
def test_qgemm_rejects_bad_input():
    w = random_qtensor(GGMLType.Q4_0, 64, 256, seed=1)
    x = torch.randn(12, 256)
    odd = random_qtensor(GGMLType.Q4_0, 40, 256)            # rows not a multiple of 32
    assert not kernels.qgemm_supported(odd)
    with pytest.raises(ValueError, match="does not take Q4_0"):
        kernels.qgemm_many([odd], x)
    with pytest.raises(ValueError, match="does not take Q4_0"):
        kernels.qgemm_many([w, odd], x)
    q2k = random_qtensor(GGMLType.Q2_K, 32, 256)             # a type it has no unpacking for
    if GGMLType.Q2_K not in QG_TYPES:
        with pytest.raises(ValueError, match="does not take Q2_K"):
            kernels.qgemm_many([q2k], x)
    f = QTensor("f", GGMLType.F32, (32, 256), np.zeros(32 * 256 * 4, dtype=np.uint8))
    assert not kernels.qgemm_supported(f)
    with pytest.raises(ValueError, match="same number of columns"):
        kernels.qgemm_many([w, random_qtensor(OTHER, 32, 512)], x)
    with pytest.raises(ValueError, match=r"x must be .*\[n, 256\]"):
        kernels.qgemm_many([w], torch.randn(12, 512))
    with pytest.raises(ValueError, match="x must be"):
        kernels.qgemm_many([w], torch.randn(12, 256, dtype=torch.float16))
    with pytest.raises(ValueError, match="x must be"):
        kernels.qgemm_many([w], torch.randn(256, 12).T)          # columns not contiguous
    w2 = random_qtensor(OTHER, 32, 256)
    with pytest.raises(ValueError, match="all be f32 or all bf16"):
        kernels.qgemm_many([w, w2], x, [torch.empty(12, 64), torch.empty(12, 32, dtype=torch.bfloat16)])
    with pytest.raises(ValueError, match="all be f32 or all bf16"):
        kernels.qgemm_many([w], x, [torch.empty(12, 64, dtype=torch.float16)])
    with pytest.raises(ValueError, match=r"must be \[12, 64\]"):
        kernels.qgemm_many([w], x, [torch.empty(12, 32)])
    with pytest.raises(ValueError, match="1..8"):
        kernels.qgemm_many([w] * (kernels.MULTI_MAX + 1), x)
    with pytest.raises(ValueError, match="1..8"):
        kernels.qgemm_many([], x)


# ---- the switches: engine.ops and engine.cpu_features ----------------------------------------------

@needs_qgemm
def test_ops_without_the_int8_gemm_take_dequantize_and_matmul(monkeypatch, best_isa):
    monkeypatch.delenv("CELLAR_ISA", raising=False)
    monkeypatch.setattr(ops, "PREFILL", "i8")
    monkeypatch.setattr(ops, "SCRATCH_DTYPE", torch.float32)      # f32 matmul: a strict comparison
    w = random_qtensor(GGMLType.Q4_K, 96, 512, seed=5)
    n = ops.GEMV_MAX_ROWS + 29
    x = _x(n, 512, seed=6)
    i8 = kernels.qgemm_many([w], x)[0]
    assert kernels.set_isa("scalar") == "scalar"
    assert not kernels.qgemm_supported(w) and not ops.use_i8(w)
    with pytest.raises(ValueError, match="does not take"):
        kernels.qgemm_many([w], x)
    scratch = ops.Scratch.for_weights([w])
    assert scratch.buf.numel() == w.rows * w.cols and scratch.batch_dtype == torch.float32
    got = ops.linear(x, w, scratch)
    ref = x @ dequantize_torch(w.data, w.qtype, w.shape, torch.float32).T
    assert got.shape == (n, w.rows)
    assert rel_err(got.numpy(), ref.numpy()) < 1e-5            # the int8 result is ~1e-3 off
    assert rel_err(i8.numpy(), ref.numpy()) > 1e-5             # (so the check tells them apart)
    many = ops.linear_many(x, [w, w], scratch)
    assert all(rel_err(m.numpy(), ref.numpy()) < 1e-5 for m in many)


@needs_qgemm
def test_ops_send_batches_to_the_int8_gemm(monkeypatch, best_isa, threads):
    monkeypatch.delenv("CELLAR_ISA", raising=False)
    w = random_qtensor(GGMLType.Q5_0, 64, 256, seed=8)
    w2 = random_qtensor(GGMLType.Q4_K, 32, 256, seed=9)
    n = ops.GEMV_MAX_ROWS + 1
    x = _x(n, 256, seed=10)
    monkeypatch.setattr(ops, "PREFILL", "f32")
    assert not ops.use_i8(w)
    monkeypatch.setattr(ops, "PREFILL", "i8")
    assert ops.use_i8(w) and ops.use_i8(w2)
    assert not ops.use_i8(random_qtensor(GGMLType.Q5_0, 48, 256))       # not whole panels
    assert not ops.use_i8(x)                                           # not a QTensor
    scratch = ops.Scratch.for_weights([w, w2])
    assert scratch.buf.numel() == 1 and scratch.batch_dtype == torch.float32
    assert ops.batched_dtype(n, [w, w2], scratch) == torch.float32
    ref = kernels.qgemm_many([w], x)[0]
    assert torch.equal(ops.linear(x, w, scratch), ref)
    out = torch.full((n, w.rows), 3.0)
    assert ops.linear(x, w, scratch, out) is out and torch.equal(out, ref)
    refs = kernels.qgemm_many([w, w2], x)
    for g, r in zip(ops.linear_many(x, [w, w2], scratch), refs):
        assert torch.equal(g, r)
    # up to GEMV_MAX_ROWS rows the GEMV still runs
    xs = x[: ops.GEMV_MAX_ROWS].contiguous()
    assert torch.equal(ops.linear(xs, w, scratch), kernels.gemv(w, xs))


VNNI = {"avx512_vnni", "avx512f", "avx512bw", "avx512vl", "avx2", "fma", "f16c"}
AVX2 = {"avx2", "fma", "f16c"}
ALL_BUILT = {"scalar", "avx2", "avx512", "avx512vnni"}


def test_int8_prefill_mode_and_flags(monkeypatch):
    monkeypatch.delenv("CELLAR_ISA", raising=False)
    monkeypatch.delenv("CELLAR_PREFILL", raising=False)
    def f(flags, mode=None):
        return cpu_features.int8_prefill(flags, mode, ALL_BUILT)

    def k(flags):
        return cpu_features.int8_kernel(flags, ALL_BUILT)

    assert k(VNNI) == "vnni" and k(AVX2) == "avx2" and k({"avx2"}) is None and k(set()) is None
    assert f(VNNI, "auto") is True
    assert f(VNNI | {"avx512_bf16"}, "auto") is True
    assert f(VNNI | {"amx_bf16"}, "auto") is False                 # AMX: the bf16 matmul
    assert f(AVX2, "auto") is True                                 # the AVX2 kernel beats the f32 matmul too
    assert f(set(), "auto") is False and f(set(), "i8") is False   # no kernel at all
    assert f(VNNI, "f32") is False
    assert f(VNNI, "gemm") is False
    assert f(AVX2, "i8") is True
    assert f(VNNI | {"amx_bf16"}, "i8") is True
    monkeypatch.setenv("CELLAR_PREFILL", "i8")
    assert f(AVX2) is True                                         # mode from the environment
    monkeypatch.setenv("CELLAR_PREFILL", "f32")
    assert f(VNNI) is False
    monkeypatch.setenv("CELLAR_PREFILL", "bogus")
    with pytest.raises(ValueError, match="CELLAR_PREFILL"):
        f(VNNI)
    monkeypatch.delenv("CELLAR_PREFILL")
    for isa in ("avx2", "avx512"):                                 # a lower path: the AVX2 kernel
        monkeypatch.setenv("CELLAR_ISA", isa)
        assert k(VNNI) == "avx2"
        assert f(VNNI, "i8") is True
    monkeypatch.setenv("CELLAR_ISA", "scalar")
    assert k(VNNI) is None and f(VNNI, "auto") is False and f(VNNI, "i8") is False
    monkeypatch.setenv("CELLAR_ISA", "avx512-vnni")
    assert k(VNNI) == "vnni" and f(VNNI, "auto") is True


def test_int8_kernel_follows_what_the_library_was_built_with(monkeypatch):
    """The planner asks the build's manifest (native/build.py), not only the CPU: no library, no int8 GEMM
    (the runtime then dequantizes every matrix); a library without its VNNI build runs the AVX2 kernel."""
    monkeypatch.delenv("CELLAR_ISA", raising=False)
    k = cpu_features.int8_kernel
    assert k(VNNI, set()) is None
    assert k(VNNI, {"scalar"}) is None
    assert k(VNNI, {"scalar", "avx2"}) == "avx2"
    assert cpu_features.int8_takes(8, (32, 32), VNNI, {"scalar", "avx2"}) is False     # Q8_0: VNNI only
    assert cpu_features.int8_takes(8, (32, 32), VNNI, ALL_BUILT) is True
    assert cpu_features.int8_prefill(VNNI, "i8", set()) is False
    monkeypatch.setenv("CELLAR_NO_NATIVE", "1")
    assert cpu_features.built_isas() == frozenset()
    monkeypatch.delenv("CELLAR_NO_NATIVE")
    if kernels.AVAILABLE:                             # the manifest beside the library names its builds
        built = cpu_features.built_isas()
        assert "scalar" in built
        assert ("avx512vnni" in built) == ("avx512-vnni" in kernels.ISA_NAMES[: kernels.ISA_NAMES.index(kernels.best_isa()) + 1])


def test_int8_takes(monkeypatch):
    monkeypatch.delenv("CELLAR_ISA", raising=False)
    for flags in (VNNI, AVX2):
        def t(q, shape):
            return cpu_features.int8_takes(q, shape, flags, ALL_BUILT)
        assert t(12, (64, 256)) is True
        assert t(12, (64, 32)) is False                  # Q4_K: whole 256-value super-blocks
        assert t(13, (32, 512)) is True and t(13, (32, 288)) is False
        assert t(2, (33, 32)) is False                   # rows not whole 32-row panels
        assert t(2, (32, 32)) is True
        assert t(8, (96, 64)) is (flags == VNNI)         # Q8_0: VNNI only
        assert t(2, (32, 48)) is False
        assert t(14, (64, 256)) is True and t(14, (64, 32)) is False
        assert t(10, (64, 256)) is False and t(11, (64, 256)) is False      # Q2_K, Q3_K
        assert t(0, (64, 256)) is False and t(1, (64, 256)) is False        # F32, F16
        assert t(2, (64,)) is False and t(2, (2, 64, 256)) is False
    assert {2, 3, 6, 7, 8, 12, 13, 14} == cpu_features.INT8_PREFILL_TYPES
    assert cpu_features.INT8_AVX2_TYPES == cpu_features.INT8_PREFILL_TYPES - {8}


@needs_qgemm
@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1,
                                   GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K], ids=lambda t: t.name)
def test_every_kernel_gives_the_same_bits(qtype, best_isa):
    """The AVX2 kernel (vpmaddubsw, int16 partial sums) and the VNNI one (vpdpbusd) sum the same integers
    exactly and take the same float steps lane for lane: the same bits, f32 and bf16 out; so do the
    activations' quantization passes."""
    isas = [i for i in ("avx512-vnni", "avx512", "avx2") if kernels.ISA_NAMES.index(i) <= kernels.ISA_NAMES.index(kernels.best_isa())]
    w = random_qtensor(qtype, 96, _cols(qtype), seed=int(qtype))
    x = _x(37, _cols(qtype), seed=2)
    got = {}
    for isa in isas:
        assert kernels.set_isa(isa) == isa
        ob = torch.empty(37, 96, dtype=torch.bfloat16)
        got[isa] = (kernels.qgemm_many([w], x)[0], kernels.qgemm_many([w], x.bfloat16(), [ob])[0])
    first = got[isas[0]]
    for isa in isas[1:]:
        assert torch.equal(got[isa][0], first[0]) and torch.equal(got[isa][1], first[1]), isa


@needs_qgemm
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_nonfinite_activation_gives_nan_on_its_row_only(bad, best_isa):
    """A NaN or an infinity in a row of x (a model already broken upstream) makes that row's outputs NaN,
    on every kernel alike, and leaves the other rows as they were (quantized, a NaN became INT_MIN, which
    the builds narrowed differently and whose integer sums overflowed)."""
    isas = [i for i in ("avx512-vnni", "avx2") if kernels.ISA_NAMES.index(i) <= kernels.ISA_NAMES.index(kernels.best_isa())]
    for qtype in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q6_K):
        w = random_qtensor(qtype, 64, _cols(qtype), seed=3)
        x = _x(9, _cols(qtype), seed=4)
        clean = kernels.qgemm_many([w], x)[0]
        for k in (0, 5, 31, _cols(qtype) - 1):
            xb = x.clone()
            xb[2, k] = bad
            for isa in isas:
                kernels.set_isa(isa)
                y = kernels.qgemm_many([w], xb)[0]
                assert bool(y[2].isnan().all()), (qtype.name, k, isa)
                rest = [r for r in range(9) if r != 2]
                assert torch.equal(y[rest], clean[rest]), (qtype.name, k, isa)
            kernels.set_isa(kernels.best_isa())


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20


@needs_qgemm
def test_changing_the_thread_count_frees_the_old_workers_buffers(best_isa):
    """The pool replaces its workers when the thread count changes; each one's weight panel (cols / 32 x
    1280 bytes) is freed with it. Before, 60 switches between 7 and 8 threads over a 16384-column weight
    took the RSS from 256 to 455 MiB."""
    w = random_qtensor(GGMLType.Q4_0, 2048, 16384, seed=1)    # a panel: 640 KiB; 64 of them, so workers join
    x = torch.randn(64, 16384)
    before = kernels.get_threads()
    try:
        kernels.set_threads(4)
        kernels.qgemm_many([w], x)
        rss0 = _rss_mib()
        for i in range(30):
            kernels.set_threads(4 + i % 2)
            kernels.qgemm_many([w], x)
        grown = _rss_mib() - rss0
    finally:
        kernels.set_threads(before)
    assert grown < 20, f"RSS grew {grown:.1f} MiB over 30 thread-count changes"   # leaking: ~60 MiB
