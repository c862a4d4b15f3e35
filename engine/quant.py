"""ggml tensor types, their block layouts, and reference dequantizers (numpy and vectorized torch).

Weights stay in their GGUF block layout; these functions turn raw block bytes into floats on demand.
Layouts follow ggml's `block_*` structs (ggml-common.h) and `dequantize_row_*` (ggml-quants.c).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from math import prod

import numpy as np

torch = None   # imported on first torch dequantization, so reading a GGUF never pays for importing torch


def _import_torch():
    global torch
    if torch is None:
        import torch as _torch
        torch = _torch
    return torch


class GGMLType(IntEnum):
    """ggml's tensor type numbers (gaps are types ggml has removed)."""
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


QK_K = 256

# (elements per block, bytes per block)
BLOCK: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 2 + 16),
    GGMLType.Q4_1: (32, 2 + 2 + 16),
    GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: (32, 2 + 32),
    GGMLType.Q8_1: (32, 4 + 4 + 32),
    GGMLType.Q2_K: (QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    GGMLType.Q3_K: (QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),
    GGMLType.Q4_K: (QK_K, 2 + 2 + 12 + QK_K // 2),
    GGMLType.Q5_K: (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    GGMLType.Q6_K: (QK_K, 2 + QK_K // 16 + 3 * QK_K // 4),
    GGMLType.Q8_K: (QK_K, 4 + QK_K + QK_K // 8),
    GGMLType.IQ2_XXS: (QK_K, 2 + QK_K // 4),
    GGMLType.IQ2_XS: (QK_K, 2 + QK_K // 4 + QK_K // 32),
    GGMLType.IQ3_XXS: (QK_K, 2 + 3 * (QK_K // 8)),
    GGMLType.IQ1_S: (QK_K, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: (32, 2 + 16),
    GGMLType.IQ3_S: (QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    GGMLType.IQ2_S: (QK_K, 2 + QK_K // 4 + QK_K // 16),
    GGMLType.IQ4_XS: (QK_K, 2 + 2 + QK_K // 2 + QK_K // 64),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (QK_K, 2 + 4 * 13),
    GGMLType.TQ2_0: (QK_K, 2 + 64),
    GGMLType.MXFP4: (32, 1 + 16),
}

SUPPORTED: frozenset[GGMLType] = frozenset({
    GGMLType.F32, GGMLType.F16, GGMLType.BF16,
    GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
    GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
})


def row_nbytes(qtype: GGMLType, n_cols: int) -> int:
    """Bytes one row of `n_cols` elements takes; n_cols must be a whole number of blocks."""
    block, nbytes = BLOCK[GGMLType(qtype)]
    if n_cols % block:
        raise ValueError(f"{GGMLType(qtype).name} rows need a multiple of {block} elements, got {n_cols}")
    return n_cols // block * nbytes


def _n_blocks(raw, qtype: GGMLType, shape) -> tuple[int, int]:
    block, nb = BLOCK[qtype]
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("a tensor shape needs at least one dimension")
    need = row_nbytes(qtype, shape[-1]) * prod(shape[:-1])
    have = raw.numel() if hasattr(raw, "numel") else raw.size
    if have != need:
        raise ValueError(f"{qtype.name} tensor of shape {list(shape)} needs {need} bytes, got {have}")
    return need // nb, nb


# ---- numpy reference: one function per type, blocks (n, bytes per block) uint8 -> (n, elements) f32
def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32): low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits32(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes -> (n, 32) bits, little-endian: bit i belongs to element i."""
    return np.unpackbits(np.ascontiguousarray(qh), axis=-1, bitorder="little")


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4)."""
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=-1)
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _np_q4_0(b):
    return _f16(b[:, :2]) * (_nibbles(b[:, 2:]).astype(np.int8) - 8).astype(np.float32)


def _np_q4_1(b):
    return _nibbles(b[:, 4:]).astype(np.float32) * _f16(b[:, :2]) + _f16(b[:, 2:4])


def _np_q5_0(b):
    q = (_nibbles(b[:, 6:]) | (_bits32(b[:, 2:6]) << 4)).astype(np.int8) - 16
    return _f16(b[:, :2]) * q.astype(np.float32)


def _np_q5_1(b):
    q = (_nibbles(b[:, 8:]) | (_bits32(b[:, 4:8]) << 4)).astype(np.float32)
    return q * _f16(b[:, :2]) + _f16(b[:, 2:4])


def _np_q8_0(b):
    return _f16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)


def _np_q2_k(b):
    n = len(b)
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).astype(np.float32))[:, :, None]
    ml = (dmin * (scales >> 4).astype(np.float32))[:, :, None]
    q = (qs.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
    return (dl * q.reshape(n, 16, 16).astype(np.float32) - ml).reshape(n, QK_K)


def _np_q3_k(b):
    n = len(b)
    hmask, qs, s = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b[:, 108:110])
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=-1)
    high = (s[:, 8:12].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], np.uint8)[:, None]).reshape(n, 16) & 3
    scales = (low | (high << 4)).astype(np.int8) - 32
    dl = (d * scales.astype(np.float32))[:, :, None]
    ql = (qs.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
    hm = (hmask.reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8)[:, None]) & 1
    q = ql.reshape(n, 16, 16).astype(np.int8) - ((hm.reshape(n, 16, 16) ^ 1) << 2).astype(np.int8)
    return (dl * q.astype(np.float32)).reshape(n, QK_K)


def _np_q4_k(b):
    n = len(b)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    q = (b[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]) & 0x0F
    return ((d * sc)[:, :, None] * q.reshape(n, 8, 32).astype(np.float32) - (dmin * mn)[:, :, None]).reshape(n, QK_K)


def _np_q5_k(b):
    n = len(b)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    ql = (b[:, 48:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]) & 0x0F
    qh = (b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8)[:, None]) & 1
    q = (ql.reshape(n, 8, 32) | (qh << 4)).astype(np.float32)
    return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(n, QK_K)


def _np_q6_k(b):
    n = len(b)
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    lo = (ql.reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8)[:, None]) & 0x0F
    hi = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
    q = (lo.reshape(n, 8, 32) | (hi.reshape(n, 8, 32) << 4)).astype(np.int8) - 32
    return ((d * scales)[:, :, None] * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


_NP_BLOCKS = {
    GGMLType.Q4_0: _np_q4_0, GGMLType.Q4_1: _np_q4_1, GGMLType.Q5_0: _np_q5_0, GGMLType.Q5_1: _np_q5_1,
    GGMLType.Q8_0: _np_q8_0, GGMLType.Q2_K: _np_q2_k, GGMLType.Q3_K: _np_q3_k, GGMLType.Q4_K: _np_q4_k,
    GGMLType.Q5_K: _np_q5_k, GGMLType.Q6_K: _np_q6_k,
}


def _unsupported(qtype: GGMLType) -> ValueError:
    return ValueError(f"cannot dequantize {qtype.name}; supported: {', '.join(t.name for t in sorted(SUPPORTED))}")


def dequantize(raw: np.ndarray, qtype, shape) -> np.ndarray:
    """Reference dequantizer: raw GGUF block bytes (uint8) -> float32 array of `shape` (torch order)."""
    qtype = GGMLType(qtype)
    if qtype not in SUPPORTED:
        raise _unsupported(qtype)
    raw = np.asarray(raw).view(np.uint8).reshape(-1)
    n_blocks, nb = _n_blocks(raw, qtype, shape)
    if qtype == GGMLType.F32:
        out = raw.view(np.float32).astype(np.float32)
    elif qtype == GGMLType.F16:
        out = raw.view(np.float16).astype(np.float32)
    elif qtype == GGMLType.BF16:
        out = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        with np.errstate(invalid="ignore", over="ignore"):   # inf/NaN scales propagate, as in ggml
            out = _NP_BLOCKS[qtype](raw.reshape(n_blocks, nb))
    return out.reshape(tuple(shape))


# ---- vectorized torch: the same arithmetic on whole tensors (no loop over blocks) ----------------
def _t_f16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).to(torch.float32)


def _t_shifts(values, b: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8, device=b.device)


def _t_nibbles(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _t_bits32(qh: torch.Tensor) -> torch.Tensor:
    return ((qh[:, :, None] >> _t_shifts(range(8), qh)) & 1).reshape(qh.shape[0], 32)


def _t_scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([a & 63, (c & 0x0F) | ((a >> 6) << 4)], dim=-1)
    mn = torch.cat([b & 63, (c >> 4) | ((b >> 6) << 4)], dim=-1)
    return sc.to(torch.float32), mn.to(torch.float32)


def _t_q4_0(b):
    return _t_f16(b[:, :2]) * (_t_nibbles(b[:, 2:]).to(torch.int8) - 8).to(torch.float32)


def _t_q4_1(b):
    return _t_nibbles(b[:, 4:]).to(torch.float32) * _t_f16(b[:, :2]) + _t_f16(b[:, 2:4])


def _t_q5_0(b):
    q = (_t_nibbles(b[:, 6:]) | (_t_bits32(b[:, 2:6]) << 4)).to(torch.int8) - 16
    return _t_f16(b[:, :2]) * q.to(torch.float32)


def _t_q5_1(b):
    q = (_t_nibbles(b[:, 8:]) | (_t_bits32(b[:, 4:8]) << 4)).to(torch.float32)
    return q * _t_f16(b[:, :2]) + _t_f16(b[:, 2:4])


def _t_q8_0(b):
    return _t_f16(b[:, :2]) * b[:, 2:].contiguous().view(torch.int8).to(torch.float32)


def _t_q2_k(b):
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _t_f16(b[:, 80:82]), _t_f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).to(torch.float32))[:, :, None]
    ml = (dmin * (scales >> 4).to(torch.float32))[:, :, None]
    q = (qs.reshape(n, 2, 1, 32) >> _t_shifts([0, 2, 4, 6], b)[:, None]) & 3
    return (dl * q.reshape(n, 16, 16).to(torch.float32) - ml).reshape(n, QK_K)


def _t_q3_k(b):
    n = b.shape[0]
    hmask, qs, s = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _t_f16(b[:, 108:110])
    low = torch.cat([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], dim=-1)
    high = (s[:, 8:12].reshape(n, 1, 4) >> _t_shifts([0, 2, 4, 6], b)[:, None]).reshape(n, 16) & 3
    scales = (low | (high << 4)).to(torch.int8) - 32
    dl = (d * scales.to(torch.float32))[:, :, None]
    ql = (qs.reshape(n, 2, 1, 32) >> _t_shifts([0, 2, 4, 6], b)[:, None]) & 3
    hm = (hmask.reshape(n, 1, 32) >> _t_shifts(range(8), b)[:, None]) & 1
    q = ql.reshape(n, 16, 16).to(torch.int8) - ((hm.reshape(n, 16, 16) ^ 1) << 2).to(torch.int8)
    return (dl * q.to(torch.float32)).reshape(n, QK_K)


def _t_q4_k(b):
    n = b.shape[0]
    d, dmin = _t_f16(b[:, 0:2]), _t_f16(b[:, 2:4])
    sc, mn = _t_scale_min_k4(b[:, 4:16])
    q = (b[:, 16:].reshape(n, 4, 1, 32) >> _t_shifts([0, 4], b)[:, None]) & 0x0F
    return ((d * sc)[:, :, None] * q.reshape(n, 8, 32).to(torch.float32) - (dmin * mn)[:, :, None]).reshape(n, QK_K)


def _t_q5_k(b):
    n = b.shape[0]
    d, dmin = _t_f16(b[:, 0:2]), _t_f16(b[:, 2:4])
    sc, mn = _t_scale_min_k4(b[:, 4:16])
    ql = (b[:, 48:].reshape(n, 4, 1, 32) >> _t_shifts([0, 4], b)[:, None]) & 0x0F
    qh = (b[:, 16:48].reshape(n, 1, 32) >> _t_shifts(range(8), b)[:, None]) & 1
    q = (ql.reshape(n, 8, 32) | (qh << 4)).to(torch.float32)
    return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(n, QK_K)


def _t_q6_k(b):
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    d = _t_f16(b[:, 208:210])
    lo = (ql.reshape(n, 2, 1, 64) >> _t_shifts([0, 4], b)[:, None]) & 0x0F
    hi = (qh.reshape(n, 2, 1, 32) >> _t_shifts([0, 2, 4, 6], b)[:, None]) & 3
    q = (lo.reshape(n, 8, 32) | (hi.reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    return ((d * scales)[:, :, None] * q.reshape(n, 16, 16).to(torch.float32)).reshape(n, QK_K)


_TORCH_BLOCKS = {
    GGMLType.Q4_0: _t_q4_0, GGMLType.Q4_1: _t_q4_1, GGMLType.Q5_0: _t_q5_0, GGMLType.Q5_1: _t_q5_1,
    GGMLType.Q8_0: _t_q8_0, GGMLType.Q2_K: _t_q2_k, GGMLType.Q3_K: _t_q3_k, GGMLType.Q4_K: _t_q4_k,
    GGMLType.Q5_K: _t_q5_k, GGMLType.Q6_K: _t_q6_k,
}


def as_uint8_tensor(raw) -> torch.Tensor:
    """A 1-D uint8 torch view of raw bytes (numpy arrays, read-only mmap views included), no copy."""
    _import_torch()
    if isinstance(raw, torch.Tensor):
        return raw.reshape(-1).view(torch.uint8) if raw.dtype != torch.uint8 else raw.reshape(-1)
    arr = np.asarray(raw).view(np.uint8).reshape(-1)
    if not arr.flags.writeable:   # torch wants writable memory; nothing here writes to it
        arr = np.asarray(_WritableView(arr))
    return torch.from_numpy(arr)


class _WritableView:
    """Exposes a read-only array's memory through the array interface without a copy."""

    def __init__(self, arr: np.ndarray):
        self._arr = arr
        self.__array_interface__ = dict(arr.__array_interface__, data=(arr.ctypes.data, False))


def dequantize_torch(raw, qtype, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Vectorized dequantizer: raw block bytes (uint8 tensor) -> `dtype` (float32) tensor of `shape`."""
    _import_torch()
    dtype = torch.float32 if dtype is None else dtype
    qtype = GGMLType(qtype)
    if qtype not in SUPPORTED:
        raise _unsupported(qtype)
    raw = as_uint8_tensor(raw)
    n_blocks, nb = _n_blocks(raw, qtype, shape)
    shape = tuple(int(s) for s in shape)
    if qtype == GGMLType.F32:
        out = raw.view(torch.float32)
    elif qtype == GGMLType.F16:
        out = raw.view(torch.float16)
    elif qtype == GGMLType.BF16:
        out = raw.view(torch.bfloat16)
    else:
        out = _TORCH_BLOCKS[qtype](raw.reshape(n_blocks, nb))
    return out.reshape(shape).to(dtype, copy=out.data_ptr() == raw.data_ptr())


class BlockShape:
    """Rows, columns and byte sizes of a matrix of GGUF blocks (needs `qtype` and torch-order `shape`)."""
    qtype: GGMLType
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return prod(self.shape[:-1])

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def row_bytes(self) -> int:
        return row_nbytes(self.qtype, self.cols)

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


@dataclass
class QTensor(BlockShape):
    """A weight kept in its GGUF block layout. shape is torch order; data the raw uint8 blocks."""
    name: str
    qtype: GGMLType
    shape: tuple[int, ...]
    data: np.ndarray

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_torch(self.data, self.qtype, self.shape, dtype)
