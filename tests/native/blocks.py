"""Random GGUF blocks of every supported type (random bits, sane scale fields) and a float64 oracle."""
from __future__ import annotations

import numpy as np
from gguf import quants

from engine.quant import BLOCK, GGMLType, QTensor

# byte offsets of the f16 scale fields inside one block
F16_FIELDS = {
    GGMLType.Q4_0: (0,), GGMLType.Q4_1: (0, 2), GGMLType.Q5_0: (0,), GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,), GGMLType.Q2_K: (80, 82), GGMLType.Q3_K: (108,), GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2), GGMLType.Q6_K: (208,),
}
ALL_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, *F16_FIELDS]


def random_qtensor(qtype: GGMLType, rows: int, cols: int, seed: int = 0) -> QTensor:
    rng = np.random.default_rng(seed)
    if qtype == GGMLType.F32:
        raw = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    elif qtype == GGMLType.F16:
        raw = rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    elif qtype == GGMLType.BF16:
        f = rng.standard_normal((rows, cols)).astype(np.float32)
        raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    else:
        per, nb = BLOCK[qtype]
        blocks = rng.integers(0, 256, size=(rows * cols // per, nb), dtype=np.uint8)
        for off in F16_FIELDS[qtype]:
            scale = (rng.random(blocks.shape[0]) * 0.02 + 0.001).astype(np.float16)
            blocks[:, off:off + 2] = scale.view(np.uint8).reshape(-1, 2)
        raw = blocks
    return QTensor(f"random_{qtype.name}", qtype, (rows, cols), np.ascontiguousarray(raw).reshape(-1))


def reference_weights(w: QTensor) -> np.ndarray:
    """float64 [rows, cols] through the gguf package's numpy dequantizers."""
    raw = w.data.reshape(w.rows, -1)
    if w.qtype == GGMLType.F32:
        return raw.view(np.float32).astype(np.float64)
    return quants.dequantize(raw, int(w.qtype)).reshape(w.rows, w.cols).astype(np.float64)


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    """max error of a result vector relative to its largest magnitude"""
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
