"""Linear algebra on weights kept in their GGUF block layout.

    scratch = Scratch.for_weights(weights)    # once, at load: one f32 buffer for the widest matrix
    y = linear(x, w, scratch)                 # x f32 [n, cols] -> f32 [n, rows]
    e = get_rows(token_embd, ids)             # f32 [len(ids), cols]: only the looked-up rows

Few rows (decode) run the native GEMV on the raw blocks; a batch (prefill) dequantizes the weight
into the reused scratch and runs one matmul. The scratch is f32: on CPUs without native bf16 a bf16
matmul is 6-8x slower than f32 here, and the buffer is only a few MiB (the largest layer matrix).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from engine import kernels
from engine.quant import GGMLType, QTensor, dequantize_torch

GEMV_MAX_ROWS = 8          # up to this many rows of x, the GEMV on raw blocks beats dequantize + matmul
SCRATCH_DTYPE = torch.float32


class Scratch:
    """One dequantization buffer, sized for the largest matrix it will hold, allocated (and touched)
    once; every batched linear reuses it."""

    def __init__(self, n_elements: int, dtype: torch.dtype = SCRATCH_DTYPE):
        self.buf = torch.zeros(max(int(n_elements), 1), dtype=dtype)

    @classmethod
    def for_weights(cls, weights: Iterable[QTensor]) -> "Scratch":
        return cls(max((w.rows * w.cols for w in weights), default=1))

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def view(self, w: QTensor) -> torch.Tensor:
        return self.buf[: w.rows * w.cols].view(w.rows, w.cols)


def linear(x: torch.Tensor, w: QTensor, scratch: Scratch | None = None) -> torch.Tensor:
    """x @ W.T for x f32 [n, cols]: GEMV on the blocks for small n, else dequantize + matmul."""
    if x.shape[0] <= GEMV_MAX_ROWS or scratch is None:
        return kernels.gemv(w, x.contiguous())
    W = kernels.dequantize_into(w, scratch.view(w))
    return torch.matmul(x.to(W.dtype), W.T).float()


def get_rows(w: QTensor, ids: torch.Tensor | list[int]) -> torch.Tensor:
    """Rows `ids` of w, dequantized to f32 [len(ids), cols]; the rest of the matrix is never touched."""
    idx = np.asarray(ids.tolist() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
    raw = w.data.reshape(w.rows, w.row_bytes)[idx]
    return dequantize_torch(raw.reshape(-1), w.qtype, (len(idx), w.cols))


def as_f32(w: QTensor) -> torch.Tensor:
    """A small tensor (a norm's weight) as a plain f32 torch tensor (copied out of the mapping)."""
    if GGMLType(w.qtype) == GGMLType.F32:
        return torch.from_numpy(np.frombuffer(w.data, dtype=np.float32).copy()).reshape(w.shape)
    return w.dequantize(torch.float32).reshape(w.shape).clone()
