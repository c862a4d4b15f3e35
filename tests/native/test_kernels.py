"""engine.kernels against a float64 oracle (gguf.quants dequantization + matmul), on every type and
every path: the native scalar build, the native best build, and the torch fallback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import kernels
from engine.quant import BLOCK, GGMLType, QTensor
from tests.native.blocks import ALL_TYPES, random_qtensor, reference_weights, rel_err

ROOT = Path(__file__).resolve().parents[2]
PATHS = ["scalar", "best", "fallback"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Puts engine.kernels on one path for the test, restoring the best path afterwards."""
    if request.param == "fallback":
        monkeypatch.setattr(kernels, "_lib", None)
    elif not kernels.AVAILABLE:
        pytest.skip("native library not built (python -m native.build)")
    else:
        kernels.set_isa("scalar" if request.param == "scalar" else kernels.best_isa())
    yield request.param
    if kernels.AVAILABLE:
        kernels.set_isa(kernels.best_isa())


def q8_round_trip(x: np.ndarray, block: int) -> np.ndarray:
    """x as the kernels see it (llama.cpp's rounding): int8 rint(x * 127/amax) per block of `block`
    values, times the scale amax/127, kept as f16 for 32-value blocks (q8_0 / q8_1), as 1/(127/amax) in
    f32 for 256-value ones (q8_K)."""
    xb = x.astype(np.float32).reshape(x.shape[0], -1, block)
    amax = np.abs(xb).max(axis=2, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    if block == 32:
        d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    else:
        d = np.where(inv > 0, np.float32(1) / np.where(inv > 0, inv, 1), 0).astype(np.float32)
    return (np.rint(xb * inv) * d).reshape(x.shape).astype(np.float64)


def activation_block(qtype: GGMLType) -> int | None:
    per = BLOCK[qtype][0]
    return None if per == 1 else per   # float types take x as it is


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 3])
def test_gemv_matches_float64_oracle(qtype, n, path):
    rows, cols = 48, 512
    w = random_qtensor(qtype, rows, cols, seed=int(qtype))
    W = reference_weights(w)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((n, cols)).astype(np.float32))
    y = kernels.gemv(w, x).double().numpy()
    assert y.shape == (n, rows)
    exact = x.double().numpy() @ W.T
    # the q8 activation costs well under 2% of the result's scale (llama.cpp deviates alike)
    assert rel_err(y, exact) < 2e-2
    block = activation_block(qtype)
    if path != "fallback" and block is not None:
        # against the same q8 activation the integer kernels are exact up to float rounding; with a
        # block minimum (Q4_1, Q5_1) the q8_1 sum term d * sum(q) is kept as f16 (llama.cpp's rounding),
        # which moves the minimum's share by up to 2^-11 of it
        tol = 1e-4 if qtype in (GGMLType.Q4_1, GGMLType.Q5_1) else 1e-5
        assert rel_err(y, q8_round_trip(x.numpy(), block) @ W.T) < tol
    else:
        assert rel_err(y, exact) < 1e-5


def test_gemv_vector_out_and_strided_rows(path):
    w = random_qtensor(GGMLType.Q4_K, 40, 256, seed=3)
    base = torch.randn(4, 512)
    x = base[:, :256]                       # rows 512 floats apart
    out = torch.full((4, 40), float("nan"))
    got = kernels.gemv(w, x, out)
    assert got.data_ptr() == out.data_ptr()
    one = kernels.gemv(w, x[2].contiguous())
    assert one.shape == (40,)
    np.testing.assert_allclose(one.numpy(), out[2].numpy(), rtol=1e-5, atol=1e-5 * float(out.abs().max()))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_dequantize_into_matches_reference(qtype, dtype, path):
    rows, cols = 24, 256
    w = random_qtensor(qtype, rows, cols, seed=7)
    W = torch.from_numpy(reference_weights(w)).float()
    full = torch.zeros(rows, cols, dtype=dtype)
    kernels.dequantize_into(w, full)
    assert torch.equal(full, W.to(dtype))
    part = torch.zeros(rows, cols, dtype=dtype)
    kernels.dequantize_into(w, part, 5, 11)   # out shaped like the weight: rows land at 5..11
    assert torch.equal(part[5:11], W[5:11].to(dtype))
    assert not part[:5].any() and not part[11:].any()
    scratch = torch.zeros(6, cols, dtype=dtype)   # out shaped like the range
    kernels.dequantize_into(w, scratch, 5, 11)
    assert torch.equal(scratch, W[5:11].to(dtype))


def test_bad_arguments_raise_clear_errors():
    w = random_qtensor(GGMLType.Q8_0, 8, 64)
    with pytest.raises(TypeError, match="float32"):
        kernels.gemv(w, torch.zeros(64, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[64\]"):
        kernels.gemv(w, torch.zeros(32))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.gemv(w, torch.zeros(64, 2).T)
    with pytest.raises(ValueError, match="out must be"):
        kernels.gemv(w, torch.zeros(64), torch.zeros(7))
    with pytest.raises(ValueError, match="row range"):
        kernels.dequantize_into(w, torch.zeros(8, 64), 3, 9)
    with pytest.raises(TypeError, match="bfloat16 or float32"):
        kernels.dequantize_into(w, torch.zeros(8, 64, dtype=torch.float16))
    short = QTensor("short", GGMLType.Q8_0, (8, 64), w.data[:-1])
    if kernels.AVAILABLE:
        with pytest.raises(ValueError, match="needs"):
            kernels.gemv(short, torch.zeros(64))


@pytest.mark.skipif(not kernels.AVAILABLE, reason="native library not built")
def test_thread_count_is_honoured_and_results_do_not_depend_on_it():
    def n_tasks():
        return len(os.listdir("/proc/self/task"))
    w = random_qtensor(GGMLType.Q4_1, 4096, 576, seed=5)
    x = torch.randn(2, 576)
    before = kernels.get_threads()
    torch.equal(torch.ones(1 << 20), torch.ones(1 << 20))   # torch's own OpenMP threads exist before counting
    try:
        kernels.set_threads(1)
        base_tasks = n_tasks()
        y1 = kernels.gemv(w, x)
        d1 = torch.empty(4096, 576, dtype=torch.bfloat16)
        kernels.dequantize_into(w, d1)
        assert kernels.set_threads(3) == 3
        assert n_tasks() == base_tasks + 2            # the caller is the third
        y3 = kernels.gemv(w, x)
        d3 = torch.empty_like(d1)
        kernels.dequantize_into(w, d3)
        assert torch.equal(y1, y3) and torch.equal(d1, d3)
        kernels.set_threads(2)
        assert n_tasks() == base_tasks + 1
        with pytest.raises(ValueError):
            kernels.set_threads(0)
    finally:
        kernels.set_threads(before)


def _run_env(env_extra: dict[str, str], code: str) -> str:
    env = dict(os.environ, **env_extra)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_environment_switches():
    code = "from engine import kernels as k; print(k.AVAILABLE, k.ISA)"
    assert _run_env({"CELLAR_NO_NATIVE": "1"}, code) == "False none"
    if kernels.AVAILABLE:
        assert _run_env({"CELLAR_ISA": "scalar"}, code) == "True scalar"
        # asking for more than the CPU has keeps the best it has
        assert _run_env({"CELLAR_ISA": "avx512-vnni"}, code) == f"True {kernels.best_isa()}"
