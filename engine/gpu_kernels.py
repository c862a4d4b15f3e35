"""GPU compute on raw GGUF blocks held in VRAM (uint8 CUDA tensors): upload, dequantize, matmul.

Weights stay in their block layout in VRAM; a matmul dequantizes the one weight it needs into a
transient buffer (engine.quant.dequantize_torch runs on CUDA tensors) and multiplies in `dtype`
(float32 by default, with TF32 off, so results track the CPU path to float32 rounding).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from engine.offload import LayerPack, SlotTensor, pack_layer
from engine.quant import GGMLType, QTensor, as_uint8_tensor, dequantize_torch


def is_on_gpu(w: Any) -> bool:
    data = getattr(w, "data", None)
    return isinstance(data, torch.Tensor) and data.is_cuda


def dequantize(w: SlotTensor | QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return dequantize_torch(w.data, w.qtype, w.shape, dtype)


def linear(x: torch.Tensor, w: SlotTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x [..., cols] @ W[rows, cols]^T -> [..., rows], W's raw blocks on x's device."""
    wd = dequantize(w, dtype)
    return (x.to(dtype) @ wd.t()).to(x.dtype)


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
