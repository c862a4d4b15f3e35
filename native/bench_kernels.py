"""Throughput of the native kernels: GEMV (decode) in GB/s of weight bytes and GFLOP/s per type, at
1 and 2 threads, against the torch fallback; dequantization into bf16; a rough memory read bandwidth.

Shapes are real layers: 576x1536 (SmolLM2), 640x2048 and the 262144x640 output matrix (Gemma-3).
Small layers are cycled through enough copies to exceed the CPU caches, as decode does.
`python -m native.bench_kernels [--threads 1 2] [--types Q4_1 Q8_0 ...] [--seconds 0.3]`
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine import kernels
from engine.quant import BLOCK, GGMLType, QTensor, row_nbytes

SHAPES = {"smollm2": (576, 1536), "gemma3": (640, 2048), "gemma3-out": (262144, 640)}
PLAN = [  # (type, shape)
    ("Q4_1", "smollm2"), ("Q8_0", "smollm2"), ("Q4_K", "gemma3"), ("Q6_K", "gemma3"), ("Q5_0", "gemma3"),
    ("Q8_0", "gemma3-out"), ("Q6_K", "gemma3-out"), ("Q4_0", "gemma3"), ("Q5_1", "gemma3"),
    ("Q2_K", "gemma3"), ("Q3_K", "gemma3"), ("Q5_K", "gemma3"), ("F16", "gemma3"), ("BF16", "gemma3"),
    ("F32", "gemma3"),
]
WORKING_SET = 96 << 20   # bytes of weights cycled through per measurement


def make_weight(qtype: GGMLType, rows: int, cols: int, rng) -> QTensor:
    nbytes = row_nbytes(qtype, cols) * rows
    if BLOCK[qtype][0] == 1:   # float types: real values (random bits would give NaNs and denormals)
        f = rng.standard_normal(rows * cols).astype(np.float32)
        raw = {GGMLType.F32: f.view(np.uint8), GGMLType.F16: f.astype(np.float16).view(np.uint8),
               GGMLType.BF16: (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)}[qtype]
    else:
        raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
    return QTensor(qtype.name, qtype, (rows, cols), np.ascontiguousarray(raw))


def timed(fn, seconds: float) -> float:
    """seconds per call (best of a few rounds)"""
    fn()
    best, n = float("inf"), 1
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = (time.perf_counter() - t0) / n
        best = min(best, dt)
        n = min(n * 2, 64) if dt * n < 0.02 else n
    return best


def memory_bandwidth(seconds: float) -> float:
    a = np.ones(WORKING_SET // 8, dtype=np.float64)
    return a.nbytes / timed(lambda: a.sum(), seconds) / 1e9


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--types", nargs="+", default=None)
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--no-fallback", action="store_true", help="skip the (slow) torch fallback figures")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"native: {kernels.AVAILABLE}  isa: {kernels.ISA}  memory read (1 thread, numpy sum): "
          f"{memory_bandwidth(args.seconds):.1f} GB/s")
    print(f"{'type':5} {'shape':>12} {'thr':>3} {'GB/s':>7} {'GFLOP/s':>8} {'us':>9} {'torch GB/s':>10} "
          f"{'torch mv f32 GFLOP/s':>20} {'deq bf16 GB/s':>13}")
    for tname, shape in PLAN:
        if args.types and tname not in args.types:
            continue
        qtype = GGMLType[tname]
        rows, cols = SHAPES[shape]
        one = make_weight(qtype, rows, cols, rng)
        copies = [one] + [QTensor(one.name, qtype, one.shape, one.data.copy())
                          for _ in range(max(0, WORKING_SET // one.nbytes - 1))]
        x = torch.randn(cols)
        out = torch.empty(rows)
        it = iter(())

        def step():
            nonlocal it
            w = next(it, None)
            if w is None:
                it = iter(copies)
                w = next(it)
            kernels.gemv(w, x, out)

        deq_out = torch.empty(rows, cols, dtype=torch.bfloat16)
        for nth in args.threads:
            kernels.set_threads(nth)
            torch.set_num_threads(nth)
            t = timed(step, args.seconds) if kernels.AVAILABLE else float("nan")
            td = timed(lambda: kernels.dequantize_into(one, deq_out), args.seconds) if kernels.AVAILABLE else float("nan")
            tf = float("nan")
            if not args.no_fallback and rows * cols <= 2 << 20:
                saved, kernels._lib = kernels._lib, None
                try:
                    tf = timed(lambda: kernels.gemv(one, x, out), args.seconds)
                finally:
                    kernels._lib = saved
            wf = one.dequantize()   # torch's own GEMV on an f32 copy of the weight: the unquantized baseline
            tmv = timed(lambda: torch.mv(wf, x, out=out), args.seconds)
            print(f"{tname:5} {rows:>6}x{cols:<5} {nth:>3} {one.nbytes / t / 1e9:7.2f} {2 * rows * cols / t / 1e9:8.2f} "
                  f"{t * 1e6:9.1f} {one.nbytes / tf / 1e9:10.3f} {2 * rows * cols / tmv / 1e9:20.2f} "
                  f"{rows * cols * 2 / td / 1e9:13.2f}")
            del wf
    kernels.set_threads(kernels._default_threads())


if __name__ == "__main__":
    main()
