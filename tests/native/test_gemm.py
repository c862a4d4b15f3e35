"""The prefill GEMM (native/src/gemm.c, gemm_run.c): every output bitwise what the GEMV gives for the
same weight row and activation row, on every quantized type, on the tile kernels (best ISA) and on the
scalar path (the GEMV's dot per pair), with 1 and 2 threads, at shapes that leave partial tiles."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import kernels
from engine.quant import BLOCK, GGMLType, QTensor
from tests.native.blocks import F16_FIELDS, random_qtensor, reference_weights, rel_err

QTYPES = list(F16_FIELDS)      # the quantized types: Q4_0 .. Q8_0, Q2_K .. Q6_K
TILED_ON_AVX2 = {GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
                 GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K}

pytestmark = pytest.mark.skipif(not (kernels.AVAILABLE and kernels.has_gemm()),
                                reason="native library not built (python -m native.build)")


@pytest.fixture(params=["scalar", "best"])
def isa(request):
    kernels.set_isa("scalar" if request.param == "scalar" else kernels.best_isa())
    yield kernels.ISA
    kernels.set_isa(kernels.best_isa())


def _x(n: int, cols: int, seed: int) -> torch.Tensor:
    x = np.random.default_rng(seed).standard_normal((n, cols)).astype(np.float32)
    x[n // 2] *= 40.0                  # rows of very different scales share a packed group
    return torch.from_numpy(x)


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,n", [(37, 9), (16, 17), (70, 130), (5, 600)])
def test_gemm_is_bitwise_the_gemv(qtype, rows, n, isa, threads):
    per = BLOCK[qtype][0]
    cols = per * (3 if per == 256 else 7)          # whole blocks, not a power of two
    w = random_qtensor(qtype, rows, cols, seed=rows * 31 + n)
    x = _x(n, cols, seed=n)
    got = kernels.gemm(w, x)
    assert got.shape == (n, rows)
    ref = kernels.gemv(w, x)                        # the GEMV reads each row of x on its own
    assert torch.equal(got, ref), f"{qtype.name} {isa}: {int((got != ref).sum())} outputs differ"
    # one row at a time: the same numbers (the GEMV's n-row call is per row too)
    for s in (0, n // 2, n - 1):
        assert torch.equal(got[s], kernels.gemv(w, x[s].contiguous()))


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_gemm_against_float64_oracle(qtype):
    rows, cols, n = 48, 512, 40
    w = random_qtensor(qtype, rows, cols, seed=int(qtype))
    x = _x(n, cols, seed=5)
    y = kernels.gemm(w, x).double().numpy()
    exact = x.double().numpy() @ reference_weights(w).T
    assert rel_err(y, exact) < 2e-2        # the q8 activation's rounding, as the GEMV's


def test_tile_kernels_cover_the_types_on_simd():
    if kernels.ISA == "scalar":
        pytest.skip("no SIMD path on this CPU")
    for qtype in QTYPES:
        w = random_qtensor(qtype, 1, BLOCK[qtype][0])
        assert kernels.gemm_tiled(w) == (qtype in TILED_ON_AVX2), qtype.name
    kernels.set_isa("scalar")
    try:
        assert not any(kernels.gemm_tiled(random_qtensor(q, 1, BLOCK[q][0])) for q in QTYPES)
    finally:
        kernels.set_isa(kernels.best_isa())


def test_gemm_many_equals_one_gemm_per_weight(isa, threads):
    """Weights sharing x (Q/K/V, gate/up) in one call, both activation formats at once."""
    cols, n = 512, 70
    specs = [(GGMLType.Q5_0, 100), (GGMLType.Q8_0, 33), (GGMLType.Q4_K, 64), (GGMLType.Q6_K, 20),
             (GGMLType.Q2_K, 9), (GGMLType.Q4_1, 1)]
    ws = [random_qtensor(q, r, cols, seed=i) for i, (q, r) in enumerate(specs)]
    x = _x(n, cols, seed=11)
    got = kernels.gemm_many(ws, x)
    for w, g in zip(ws, got):
        assert g.shape == (n, w.rows)
        assert torch.equal(g, kernels.gemv(w, x)), w.name


def test_gemm_reads_strided_rows_and_empty_batches():
    w = random_qtensor(GGMLType.Q4_1, 40, 256, seed=3)
    base = _x(24, 512, seed=4)
    x = base[:, :256]                       # rows 512 floats apart
    assert torch.equal(kernels.gemm(w, x), kernels.gemv(w, x.contiguous()))
    assert kernels.gemm(w, torch.empty(0, 256)).shape == (0, 40)


def test_gemm_rejects_bad_input():
    w = random_qtensor(GGMLType.Q4_K, 8, 256)
    with pytest.raises(ValueError, match="columns|256"):
        kernels.gemm(w, torch.randn(12, 512))
    with pytest.raises(ValueError, match="same number of columns"):
        kernels.gemm_many([w, random_qtensor(GGMLType.Q8_0, 8, 512)], torch.randn(12, 256))
    f = QTensor("f", GGMLType.F32, (4, 32), np.zeros(4 * 32 * 4, dtype=np.uint8))
    assert not kernels.gemm_supported(f)
    with pytest.raises(ValueError, match="quantized types"):
        kernels.gemm(f, torch.randn(12, 32))


def test_activation_buffer_is_reused():
    """x's quantized copy lives in one buffer per calling thread that grows to the largest batch and
    is reused: a second call of the same size allocates nothing new."""
    w = random_qtensor(GGMLType.Q4_1, 64, 1024, seed=1)
    kernels.gemm(w, _x(512, 1024, seed=1))
    size = kernels.gemm_buffer_bytes()
    assert size >= 512 * 1024 * 34 // 32           # int8 values + a scale per 32
    kernels.gemm(w, _x(100, 1024, seed=2))
    kernels.gemm(w, _x(512, 1024, seed=3))
    assert kernels.gemm_buffer_bytes() == size
