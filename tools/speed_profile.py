#!/usr/bin/env python3
"""Where a decode or prefill step spends its time, by kind of work (cProfile of the calling thread).

    python tools/speed_profile.py MODEL.gguf --mode decode --n 64 [--threads 2]
    python tools/speed_profile.py MODEL.gguf --mode prefill --n 512

Kinds: native GEMV (decode's quantized dot products, waiting for pool workers included), native
dequantization, torch matmul (prefill's chunks on this thread), attention (batched matmuls and
softmax), waiting for split helpers, other torch ops, and Python (interpreter time in our code).
For a native call the wall time is attributed to it, whichever thread did the work.

    python tools/speed_profile.py MODEL.gguf --mode prefill --n 512 --wall [--runs 8]

--wall (prefill): no profiler; timers around the prefill's parts (the int8 GEMM or matmuls, attention,
each native step between them, the output head), the fastest of --runs prefills. cProfile's per-call
cost inflates the Python share; this does not.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KINDS = [  # (kind, predicate on (file, function name))
    ("native decode layers", lambda f, n: f.endswith("decode_native.py") and n in ("layer", "all_layers")),
    ("native GEMV", lambda f, n: f.endswith("kernels.py") and n in ("gemv", "gemv_many")),
    ("native GEMM (prefill)", lambda f, n: f.endswith("kernels.py") and n in ("gemm", "gemm_many")),
    ("native int8 GEMM (prefill)", lambda f, n: f.endswith("kernels.py") and n == "qgemm_many"),
    ("native dequantize", lambda f, n: f.endswith("kernels.py") and n == "dequantize_into"),
    ("torch matmul (linear chunks)", lambda f, n: n == "<built-in method torch.mm>"),
    ("attention (bmm, softmax)", lambda f, n: n in ("<built-in method torch.bmm>", "<method 'softmax' of 'torch._C.TensorBase' objects>")),
    ("waiting for split helpers", lambda f, n: n == "<method 'acquire' of '_thread.lock' objects>" or n == "wait"),
    ("other torch ops", lambda f, n: f == "~" and ("torch" in n or "Tensor" in n)),
]


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    out = {k: 0.0 for k, _ in KINDS}
    out["Python and the rest"] = 0.0
    for (file, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        for kind, pred in KINDS:
            if pred(file, name):
                out[kind] += tottime
                break
        else:
            out["Python and the rest"] += tottime
    return out


def wall_parts(m, ids: list[int], runs: int) -> tuple[float, dict[str, float]]:
    """The fastest of `runs` prefills of ids, and its seconds by part (timers around the functions)."""
    import collections
    import functools

    from engine import kernels, prefill
    from engine.models import base
    acc: dict[str, float] = collections.defaultdict(float)
    saved = []

    def wrap(owner, name: str, key: str) -> None:
        f = getattr(owner, name)
        saved.append((owner, name, f))

        @functools.wraps(f)
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                acc[key] += time.perf_counter() - t
        setattr(owner, name, timed)

    for name in ("qgemm_many", "gemm_many", "gemv", "gemv_many", "dequantize_into"):
        wrap(kernels, name, "matmul (native)")
    wrap(base, "attend", "attention")
    wrap(base, "linear", "output head")
    for name in ("norm", "rope", "residual", "glu"):
        wrap(prefill.NativeOps, name, f"native step: {name}")
    best, parts = float("inf"), {}
    try:
        for _ in range(runs):
            m.reset()
            acc.clear()
            t = time.perf_counter()
            m.eval(ids)
            w = time.perf_counter() - t
            if w < best:
                best, parts = w, dict(acc)
    finally:
        for owner, name, f in reversed(saved):
            setattr(owner, name, f)
    # the head's GEMV runs inside base.linear: counted there, not twice
    parts["matmul (native)"] = parts.get("matmul (native)", 0.0) - parts.get("output head", 0.0)
    parts["Python, torch ops and the rest"] = best - sum(parts.values())
    return best, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--mode", choices=["decode", "prefill"], default="decode")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wall", action="store_true", help="prefill: timers instead of cProfile")
    ap.add_argument("--runs", type=int, default=8, help="--wall: prefills, the fastest reported")
    a = ap.parse_args()
    from engine.runtime import LoadOptions, Model
    m = Model.load(a.model, LoadOptions(ctx=max(1024, a.n + 64), threads=a.threads))
    ids = m.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 200, add_special=True)
    ids = (ids * (a.n // len(ids) + 2))[: a.n + 16]
    if a.wall:
        if a.mode != "prefill":
            ap.error("--wall times a prefill: add --mode prefill")
        m.eval(ids[:16])
        wall, parts = wall_parts(m, ids[: a.n], a.runs)
        print(f"prefill {a.n} tokens, {a.threads} threads: {a.n / wall:.1f} tok/s ({wall * 1000:.1f} ms, "
              f"the fastest of {a.runs})")
        for kind, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<32} {sec * 1000:7.1f} ms  {100 * sec / wall:5.1f} %")
        return
    pr = cProfile.Profile()
    if a.mode == "prefill":
        m.eval(ids[:16])
        m.reset()
        t = time.perf_counter()
        pr.enable()
        m.eval(ids[: a.n])
        pr.disable()
    else:
        m.eval(ids[:16])
        t = time.perf_counter()
        pr.enable()
        for tok in ids[16:16 + a.n]:
            m.eval([tok])
        pr.disable()
    wall = time.perf_counter() - t
    parts = breakdown(pstats.Stats(pr))
    total = sum(parts.values())
    print(f"{a.mode} {a.n} tokens, {a.threads} threads: {a.n / wall:.1f} tok/s ({wall:.2f} s)")
    for kind, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<30} {sec:7.3f} s  {100 * sec / total:5.1f} %")


if __name__ == "__main__":
    main()
