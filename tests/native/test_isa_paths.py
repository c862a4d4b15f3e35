"""Every instruction-set path of the quantized dot products, not only the scalar one and the best.

The other native tests run the scalar path and the CPU's best; on an AVX-512 VNNI machine that leaves
the AVX2 path to test_llamacpp_gemv and the AVX-512 path without VNNI to nothing. Here each path the CPU
runs: the GEMV against the float64 product with the same q8 activations, every path against the
scalar one, the prefill GEMM bitwise the GEMV, and what the kernels document: the AVX-512 paths give
the AVX2 path's floats bit for bit (the same integer block sums, vpdpbusd or vpmaddubsw + vpmaddwd,
and the same float arithmetic in the same order), so they are as close to llama.cpp as it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import kernels
from engine.quant import BLOCK, GGMLType
from tests.native.blocks import random_qtensor, reference_weights, rel_err
from tests.native.test_kernels import q8_round_trip

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="native library not built (python -m native.build)")

LEGACY = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0]
KQUANTS = [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]


def _paths() -> list[str]:
    if not kernels.AVAILABLE:
        return []
    return list(kernels.ISA_NAMES[:kernels.ISA_NAMES.index(kernels.best_isa()) + 1])


def _cols(qtype: GGMLType) -> list[int]:
    # 32-value types: 1, 2, an odd and an even number of blocks (the AVX-512 kernels take two at a time)
    return [32, 64, 7 * 32, 18 * 32] if BLOCK[qtype][0] == 32 else [256, 3 * 256]


def _on(isa: str, fn):
    kernels.set_isa(isa)
    try:
        return fn()
    finally:
        kernels.set_isa(kernels.best_isa())


def _x(n: int, cols: int, seed: int) -> torch.Tensor:
    x = np.random.default_rng(seed).standard_normal((n, cols)).astype(np.float32)
    x[:, ::5] *= 8.0                      # uneven magnitudes across and inside the blocks
    return torch.from_numpy(x)


@pytest.mark.parametrize("qtype", LEGACY + KQUANTS, ids=lambda t: t.name)
def test_every_path_is_exact_up_to_float_rounding(qtype):
    for cols in _cols(qtype):
        w = random_qtensor(qtype, 37, cols, seed=cols + int(qtype))
        x = _x(3, cols, seed=cols)
        W = reference_weights(w)
        want = q8_round_trip(x.numpy(), BLOCK[qtype][0]) @ W.T
        scalar = _on("scalar", lambda: kernels.gemv(w, x)).double().numpy()
        for isa in _paths():
            y = _on(isa, lambda: kernels.gemv(w, x)).double().numpy()
            # Q4_1 / Q5_1: the q8_1 sum term is kept as f16 (llama.cpp's rounding), see test_kernels
            tol = 1e-4 if qtype in (GGMLType.Q4_1, GGMLType.Q5_1) else 1e-5
            assert rel_err(y, want) < tol, f"{qtype.name} cols={cols} {isa}"
            assert rel_err(y, scalar) < 1e-5, f"{qtype.name} cols={cols} {isa} vs scalar"


@pytest.mark.parametrize("qtype", LEGACY + KQUANTS, ids=lambda t: t.name)
def test_gemm_is_bitwise_the_gemv_on_every_path(qtype):
    if not kernels.has_gemm():
        pytest.skip("no GEMM in this library")
    for cols in _cols(qtype):
        w = random_qtensor(qtype, 19, cols, seed=3 * cols + int(qtype))
        x = _x(11, cols, seed=cols + 1)
        for isa in _paths():
            got, ref = _on(isa, lambda: (kernels.gemm(w, x), kernels.gemv(w, x)))
            assert torch.equal(got, ref), f"{qtype.name} cols={cols} {isa}: {int((got != ref).sum())} differ"


@pytest.mark.parametrize("qtype", LEGACY + KQUANTS, ids=lambda t: t.name)
def test_avx512_paths_give_the_avx2_floats(qtype):
    paths = _paths()
    if "avx512" not in paths:
        pytest.skip("no AVX-512 on this CPU")
    for cols in _cols(qtype):
        w = random_qtensor(qtype, 29, cols, seed=5 * cols + int(qtype))
        x = _x(2, cols, seed=cols + 2)
        want = _on("avx2", lambda: kernels.gemv(w, x))
        for isa in paths[paths.index("avx512"):]:
            got = _on(isa, lambda: kernels.gemv(w, x))
            assert torch.equal(got, want), f"{qtype.name} cols={cols} {isa}: {int((got != want).sum())} differ from AVX2"
