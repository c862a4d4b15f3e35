"""GPU compute on raw GGUF blocks held in VRAM (uint8 CUDA tensors): upload, dequantize, matmul.

Weights stay in their block layout in VRAM; a matmul dequantizes the one weight it needs into a
transient buffer (engine.quant.dequantize_torch runs on CUDA tensors) and multiplies in `dtype`
(float32 by default, with TF32 off, so results track the CPU path to float32 rounding).

Decode (few rows of x) quantizes x first, as the CPU GEMV (native/src/q32.c, qk.c) and llama.cpp's
MMVQ do: blocks of 32 values (legacy types) or 256 (k-quants), q = round-half-even(x * (127 / max|x|)),
d = max|x| / 127 rounded to f16 for 32-value blocks (llama.cpp's q8_0 / q8_1), 1 / (127 / max|x|) in f32
for 256-value ones (q8_K). Weights with a block minimum (Q4_1, Q5_1) meet q8_1's block sum
s = f16(d * sum(q)) in place of the sum of the rounded values, as the CPU's and llama.cpp's dot products
(and CUDA's half2 ds) do: the product adds m_w * (s - d_f16 * sum(q)) per block. The product then sees
the same activations as the CPU's integer dot products; what is left is float32 rounding and summation
order (measured: docs/offload.md).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from engine.offload import LayerPack, SlotTensor, pack_layer
from engine.quant import BLOCK, GGMLType, QTensor, as_uint8_tensor, dequantize_torch

_Q8_BLOCK = {t: 32 for t in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0)}
_Q8_BLOCK.update({t: 256 for t in (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)})


# Blocks in a CPU buffer (offload_device="cpu", the tests' stand-in for a GPU) are multiplied by the CPU
# kernels, so a run there is bit-identical to a plain CPU run and any difference is a wiring bug. True runs
# the torch kernels below there as well (what a CUDA device runs).
TORCH_ON_CPU = False
# Decode quantizes x to q8 blocks as the CPU GEMV does (what was asked for, and what llama.cpp's MMVQ does);
# False keeps f32 activations. Greedy agreement with the CPU measured both ways: docs/offload.md.
Q8_DECODE = True


def is_on_gpu(w: Any) -> bool:
    data = getattr(w, "data", None)
    return isinstance(data, torch.Tensor) and data.is_cuda


def runs_here(w: Any) -> bool:
    """Whether ops.linear multiplies w with this module's torch kernels (blocks on a device)."""
    return isinstance(w, SlotTensor) and (is_on_gpu(w) or TORCH_ON_CPU)


def dequantize(w: SlotTensor | QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return dequantize_torch(w.data, w.qtype, w.shape, dtype)


def activation_block(qtype) -> int:
    """Values per q8 activation block the CPU GEMV uses for a weight of qtype (0: x stays f32)."""
    return _Q8_BLOCK.get(GGMLType(qtype), 0)


def quantize_q8(x: torch.Tensor, block: int, *, sum_error: bool = False):
    """x f32 [..., cols] through q8 blocks of `block` values and back, every step in f32 as the native
    quant_q8 / quant_q8k do: q = round(x * (127 / amax)) (half to even, as lrintf), times d = amax / 127
    rounded to f16 (32-value blocks) or d = 1 / (127 / amax) (256-value blocks). sum_error (32-value
    blocks): also q8_1's block sum s = f16((amax / 127) * sum(q)) less the sum of the rounded values,
    [..., cols / 32], what a weight's block minimum multiplies in llama.cpp's dot product."""
    xb = x.float().reshape(*x.shape[:-1], x.shape[-1] // block, block)
    amax = xb.abs().amax(-1, keepdim=True)
    # a tensor divided into 127 (torch computes 127.0 / amax as 127 * (1 / amax), an ulp off a quarter
    # of the time, which moves values sitting near .5 to the other integer)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    if block == 32:
        d = (amax / 127.0).half().float()
    else:
        d = torch.where(inv > 0, 1.0 / inv, torch.zeros_like(inv))
    q = torch.round(xb * inv)
    out = (q * d).reshape(x.shape)
    if not sum_error:
        return out
    qsum = q.sum(-1, keepdim=True)                   # integers below 2^13: exact in f32
    s = ((amax / 127.0) * qsum).half().float()
    return out, (s - d * qsum).squeeze(-1)


_MIN_BLOCK = (GGMLType.Q4_1, GGMLType.Q5_1)        # 32-value blocks that start with f16 d, then f16 m


def block_minima(w: SlotTensor | QTensor) -> torch.Tensor:
    """A Q4_1 / Q5_1 weight's per-block minimum m, f32 [rows, cols / 32], read from its blocks."""
    bs = BLOCK[GGMLType(w.qtype)][1]
    rows, cols = w.shape
    raw = w.data.reshape(rows, cols // 32, bs)[:, :, 2:4].contiguous()
    return raw.view(torch.float16).reshape(rows, cols // 32).float()


def linear(x: torch.Tensor, w: SlotTensor, dtype: torch.dtype = torch.float32, *, q8: bool = False) -> torch.Tensor:
    """x [..., cols] @ W[rows, cols]^T -> [..., rows], W's raw blocks on x's device. q8: quantize x to
    q8 blocks first (decode), as the CPU GEMV does for quantized weight types."""
    wd = dequantize(w, dtype)
    block = activation_block(w.qtype) if q8 and Q8_DECODE else 0
    if block and x.shape[-1] % block == 0:
        if GGMLType(w.qtype) in _MIN_BLOCK:
            xq, err = quantize_q8(x, block, sum_error=True)
            y = xq.to(dtype) @ wd.t()
            return (y + err.to(dtype) @ block_minima(w).to(dtype).t()).to(x.dtype)
        x = quantize_q8(x, block)
    return (x.to(dtype) @ wd.t()).to(x.dtype)


def dense(w: SlotTensor | QTensor) -> torch.Tensor:
    """A small weight (a norm vector) as an f32 tensor where its blocks are: a view for F32, else a copy."""
    if GGMLType(w.qtype) == GGMLType.F32 and isinstance(w.data, torch.Tensor):
        return w.data.view(torch.float32).reshape(w.shape)
    return dequantize(w).reshape(w.shape)


def embedding_rows(w: SlotTensor | QTensor, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows `ids` of an embedding matrix in block layout, dequantizing only those rows."""
    rows, cols = int(w.shape[0]), int(w.shape[-1])
    data = w.data if isinstance(w.data, torch.Tensor) else as_uint8_tensor(w.data)
    raw = data.reshape(rows, -1)[ids.to(data.device)]
    return dequantize_torch(raw.reshape(-1), w.qtype, (ids.numel(), cols), dtype)


class ResidentLayer:
    """One layer's tensors uploaded into a single VRAM byte buffer, packed as for streaming."""

    def __init__(self, pack: LayerPack, device: torch.device):
        self.pack = pack
        self.buffer = torch.empty(pack.nbytes, dtype=torch.uint8, device=device)
        for seg, src in zip(pack.segments, pack.sources):
            self.buffer[seg.offset:seg.offset + seg.nbytes].copy_(as_uint8_tensor(src))
        self.tensors: dict[str, SlotTensor] = {
            s.name: SlotTensor(s.name, s.qtype, s.shape, self.buffer[s.offset:s.offset + s.nbytes])
            for s in pack.segments}

    @classmethod
    def upload(cls, layer: int, tensors: Mapping[str, QTensor], device: torch.device) -> "ResidentLayer":
        return cls(pack_layer(layer, tensors), device)

    @property
    def nbytes(self) -> int:
        return self.pack.nbytes


def upload_tensor(t: QTensor, device: torch.device) -> SlotTensor:
    """A single weight (the output head, say) copied to VRAM as raw blocks."""
    return SlotTensor(t.name, GGMLType(t.qtype), tuple(t.shape), as_uint8_tensor(t.data).to(device))
