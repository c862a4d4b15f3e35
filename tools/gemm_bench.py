#!/usr/bin/env python3
"""Prefill linear throughput per weight type and layer shape: the native GEMM on the raw blocks against
dequantize + f32 matmul (engine/ops.py's two batched paths), at n activation rows.

    python tools/gemm_bench.py [--n 512] [--threads 1 2] [--types Q4_1 Q5_0 ...] [--rounds 12]

The shapes are every layer matrix of SmolLM2 (Q4_1) and Gemma-3 (Q5_0, Q8_0, Q4_K, Q6_K), plus the
other quantized types at Gemma-3's FFN shape. The two paths run alternately and the best round of
each counts. With one thread the clock is the thread's CPU time, which a machine shared with other
work disturbs less than wall time; with more threads it is wall time (noisy on a loaded machine).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine import kernels, ops  # noqa: E402
from engine.quant import GGMLType  # noqa: E402
from tests.native.blocks import random_qtensor  # noqa: E402

SHAPES = [  # (type, rows, cols, where)
    ("Q4_1", 576, 576, "smollm2 attn_q/attn_output"), ("Q4_1", 192, 576, "smollm2 attn_k/v"),
    ("Q4_1", 1536, 576, "smollm2 ffn_gate/up"), ("Q4_1", 576, 1536, "smollm2 ffn_down"),
    ("Q5_0", 1024, 640, "gemma3 attn_q"), ("Q5_0", 256, 640, "gemma3 attn_k/v"),
    ("Q8_0", 256, 640, "gemma3 attn_v (half)"), ("Q4_K", 640, 1024, "gemma3 attn_output"),
    ("Q5_0", 2048, 640, "gemma3 ffn_gate/up"), ("Q4_K", 640, 2048, "gemma3 ffn_down (half)"),
    ("Q6_K", 640, 2048, "gemma3 ffn_down (half)"),
    ("Q4_0", 2048, 640, ""), ("Q5_1", 2048, 640, ""), ("Q5_K", 640, 2048, ""), ("Q2_K", 640, 2048, ""),
    ("Q3_K", 640, 2048, ""),
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--types", nargs="+", default=None)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args(argv)
    if not kernels.has_gemm():
        sys.exit("error: native library without the GEMM (python -m native.build)")
    torch.set_num_threads(1)
    print(f"ISA {kernels.ISA}, n = {args.n}; GFLOP/s = 2 n rows cols / best time")
    for th in args.threads:
        kernels.set_threads(th)
        clock = time.thread_time if th == 1 else time.perf_counter
        for qt, rows, cols, where in SHAPES:
            if args.types and qt not in args.types:
                continue
            w = random_qtensor(GGMLType[qt], rows, cols, seed=rows + cols)
            x = torch.randn(args.n, cols)
            scratch = ops.Scratch(rows * cols)
            W = scratch.view(w)

            def f32() -> None:       # ops.linear's dequantize + matmul path
                def part(r0: int, r1: int) -> None:
                    Wc = kernels.dequantize_into(w, W, r0, r1, alone=True)
                    out[:, r0:r1] = torch.mm(x, Wc.T)
                out = torch.empty(args.n, rows)
                ops.split.run([lambda a=a, b=b: part(a, b) for a, b in ops._chunks(rows, th)])

            best = {"f32": float("inf"), "gemm": float("inf")}
            fns = {"f32": f32, "gemm": lambda: kernels.gemm(w, x)}
            for fn in fns.values():
                fn()
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    t0 = clock()
                    fn()
                    best[k] = min(best[k], clock() - t0)
            fl = 2 * args.n * rows * cols
            tiled = "tiles" if kernels.gemm_tiled(w) else "dot/pair"
            print(f"threads {th}  {qt:5s} {rows:5d}x{cols:<5d} {where:26s} f32 {fl / best['f32'] / 1e9:6.1f}  "
                  f"gemm ({tiled}) {fl / best['gemm'] / 1e9:6.1f} GFLOP/s  gemm/f32 {best['f32'] / best['gemm']:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
