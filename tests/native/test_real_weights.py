"""engine.kernels on real weights of both models (every tensor type they hold), against gguf.quants."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import kernels
from engine.gguf import GGUFFile
from engine.quant import GGMLType, QTensor
from tests.native.blocks import reference_weights, rel_err

ROWS = 192   # a slice of rows keeps the numpy oracle quick


def _one_of_each_type(path) -> list[QTensor]:
    g = GGUFFile.open(path)
    picked: dict[GGMLType, QTensor] = {}
    for name, info in g.tensors.items():
        if len(info.shape) != 2 or info.qtype in picked:
            continue
        rows = min(ROWS, info.shape[0])
        row_bytes = info.nbytes // info.shape[0]
        data = np.ascontiguousarray(g.tensor_data(name)[:rows * row_bytes])
        picked[info.qtype] = QTensor(name, info.qtype, (rows, info.shape[1]), data)
    return list(picked.values())


@pytest.fixture(scope="module")
def real_tensors(smollm2_path, gemma3_path):
    tensors = _one_of_each_type(smollm2_path) + _one_of_each_type(gemma3_path)
    types = {t.qtype for t in tensors}
    assert {GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K} <= types
    return tensors


@pytest.mark.parametrize("isa", ["scalar", "best", "fallback"])
def test_real_tensors(real_tensors, isa, monkeypatch):
    if isa == "fallback":
        monkeypatch.setattr(kernels, "_lib", None)
    elif not kernels.AVAILABLE:
        pytest.skip("native library not built")
    else:
        kernels.set_isa("scalar" if isa == "scalar" else kernels.best_isa())
    try:
        rng = np.random.default_rng(0)
        for w in real_tensors:
            W = reference_weights(w)
            x = torch.from_numpy(rng.standard_normal((2, w.cols)).astype(np.float32))
            y = kernels.gemv(w, x).double().numpy()
            assert rel_err(y, x.double().numpy() @ W.T) < 1e-2, w.name
            out = torch.empty(w.rows, w.cols, dtype=torch.bfloat16)
            kernels.dequantize_into(w, out)
            assert torch.equal(out, torch.from_numpy(W).float().to(torch.bfloat16)), w.name
    finally:
        if kernels.AVAILABLE:
            kernels.set_isa(kernels.best_isa())
