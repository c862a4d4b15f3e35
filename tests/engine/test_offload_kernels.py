"""The device kernels (engine/gpu_kernels.py): decode quantizes activations to q8 blocks as the CPU GEMV
(native/src/q32.c, qk.c) does, so a device product tracks the CPU's to f32 rounding."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from engine import gpu_kernels, kernels  # noqa: E402
from engine.offload import SlotTensor  # noqa: E402
from engine.quant import GGMLType, QTensor  # noqa: E402

needs_native = pytest.mark.skipif(not kernels.AVAILABLE, reason="needs the native kernels (the CPU's q8 GEMV)")

Q_TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K,
           GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]


@needs_native
@pytest.mark.parametrize("qtype", Q_TYPES, ids=lambda t: t.name)
def test_device_gemv_quantizes_activations_as_the_cpu_kernel(qtype):
    """Stated tolerance: |device - kernels.gemv| <= 2e-6 * max|y| (f32 rounding and summation order) on
    every type, Q4_1 / Q5_1 included (the device adds q8_1's f16 block sum as the CPU's dot uses it);
    without the q8 step the difference is 100x larger or more (the activations' quantization error)."""
    from tests.ggufgen import raw_tensor
    rng = np.random.default_rng(int(qtype))
    rt = raw_tensor(qtype, (96, 512), rng)
    w = QTensor("w", qtype, rt.shape, rt.data)
    slot = SlotTensor("w", qtype, rt.shape, torch.from_numpy(rt.data.copy()))
    x = torch.from_numpy(rng.standard_normal((2, 512)).astype(np.float32))
    ref = kernels.gemv(w, x)
    scale = ref.abs().max().item()
    q8 = (gpu_kernels.linear(x, slot, q8=True) - ref).abs().max().item() / scale
    f32 = (gpu_kernels.linear(x, slot) - ref).abs().max().item() / scale
    tol = 2e-6                       # Q4_1 / Q5_1 too: q8_1's f16 block sum is modelled (gpu_kernels)
    assert q8 <= tol, q8
    assert f32 >= 100 * max(q8, 1e-8), (f32, q8)


def test_quantize_q8_rounds_as_lrintf():
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5, 63.5] + [0.0] * 27])      # d = 1: ties go to even
    assert gpu_kernels.quantize_q8(x, 32)[0, :5].tolist() == [127.0, 0.0, 2.0, -2.0, 64.0]
    assert gpu_kernels.quantize_q8(torch.zeros(1, 32), 32).abs().sum() == 0


def test_float_weights_keep_f32_activations():
    assert gpu_kernels.activation_block(GGMLType.F16) == 0 and gpu_kernels.activation_block(GGMLType.F32) == 0
    w = SlotTensor("w", GGMLType.F32, (3, 32), torch.randn(3, 32).view(torch.uint8).reshape(-1))
    x = torch.randn(1, 32)
    assert torch.equal(gpu_kernels.linear(x, w, q8=True), gpu_kernels.linear(x, w))


def test_a_norm_vector_is_a_view_of_the_device_bytes():
    v = torch.arange(8, dtype=torch.float32)
    slot = SlotTensor("n", GGMLType.F32, (8,), v.view(torch.uint8))
    d = gpu_kernels.dense(slot)
    assert torch.equal(d, v) and d.data_ptr() == v.data_ptr()
