"""The GEMV on real weights against llama.cpp's own matrix products, bit for bit.

tests/data/llamacpp_gemv.npz holds, for one token through llama.cpp (tools/logit_gap.py --gemv-refs),
the input and output of a product for each weight type the two models hold that llama.cpp runs with
its plain AVX2 dot products: Q4_1 (activations as q8_1), Q5_0 and Q8_0 (q8_0), Q6_K (q8_K). With the
activations quantized at llama.cpp's rounding points (f16 block scales, 127/amax, nearest-even) and
the same per-block float arithmetic, the AVX2 kernels give identical floats; a change to either shows
here as a difference of ~1e-3, long before a greedy token moves. (Gemma-3's Q4_K matrices are not in
it: llama.cpp repacks them into 8-row interleaved blocks whose dot sums in another order.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine import kernels
from engine.gguf import GGUFFile
from engine.quant import GGMLType, QTensor

REFS = Path(__file__).resolve().parents[1] / "data" / "llamacpp_gemv.npz"


def _cases(path, model: str):
    z = np.load(REFS)
    g = GGUFFile.open(path)
    for key in z.files:
        m, name, part = key.split("|")
        if m == model and part == "x":
            info = g.tensors[name]
            yield QTensor(name, info.qtype, info.shape, g.tensor_data(name)), z[key], z[f"{m}|{name}|y"]


@pytest.fixture(scope="module")
def cases(smollm2_path, gemma3_path):
    out = list(_cases(smollm2_path, "smollm2")) + list(_cases(gemma3_path, "gemma3"))
    assert {GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q6_K} <= {w.qtype for w, _, _ in out}
    return out


def test_gemv_is_bit_identical_to_llamacpp_on_avx2(cases):
    if not kernels.AVAILABLE or kernels.best_isa() == "scalar":
        pytest.skip("needs the native library with AVX2")
    kernels.set_isa("avx2")
    try:
        for w, x, want in cases:
            got = kernels.gemv(w, torch.from_numpy(x.copy())).numpy()
            diff = np.abs(got - want)
            assert diff.max() == 0, f"{w.name} ({w.qtype.name}): {int((diff > 0).sum())}/{diff.size} differ, max {diff.max():.3g}"
    finally:
        kernels.set_isa(kernels.best_isa())


@pytest.mark.parametrize("isa", ["scalar", "best"])
def test_gemv_follows_llamacpp_closely_on_every_path(cases, isa):
    """Other instruction sets sum the same integer block products in another float order: ulps apart."""
    if not kernels.AVAILABLE:
        pytest.skip("native library not built")
    kernels.set_isa("scalar" if isa == "scalar" else kernels.best_isa())
    try:
        for w, x, want in cases:
            got = kernels.gemv(w, torch.from_numpy(x.copy())).numpy()
            assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), w.name
    finally:
        kernels.set_isa(kernels.best_isa())
