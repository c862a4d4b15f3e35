#!/usr/bin/env python3
"""Where a model load's time and memory go, stage by stage, as `cellar bench` then uses the model.

    python tools/load_profile.py MODEL.gguf [--ctx 2048] [--threads 2] [--pp 512] [--tg 16] [--py]

Stages: open (header, metadata, tensor table, mapping), weights (views, norm copies), KV cache and
scratch (allocated; the page thread zero-fills them), tokenizer (on the main thread meanwhile), pages
(waiting for the page thread, then offload's setup), warmup, then a pp-token prefill and tg decode steps
as the bench runs them. For each: seconds, and the change of RSS split into anonymous (private: Python objects,
torch tensors, the allocator's free blocks) and file-backed (the mapped model file), from
/proc/self/smaps_rollup; the last columns are totals over the RSS before the load, and the peak (VmHWM).
The allocator line is glibc's mallinfo2: bytes in use and free-but-kept in its arenas after each stage.
--py also traces Python allocations (tracemalloc; slows the load) and prints the largest live sites.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rollup() -> dict[str, float]:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Anonymous"):
                out[k] = int(v.split()[0]) / 1024
    with open("/proc/self/status") as f:
        out["hwm"] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    out["file"] = out["Rss"] - out["Anonymous"]
    return out


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _malloc() -> str:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return ""
    m = libc.mallinfo2()
    return f"malloc in use {(m.uordblks + m.hblkhd) / 2**20:6.1f}  free kept {m.fordblks / 2**20:5.1f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=16)
    ap.add_argument("--py", action="store_true", help="trace Python allocations (tracemalloc)")
    a = ap.parse_args()

    import numpy as np
    import torch

    from engine import kernels
    from engine.runtime import LoadOptions, Model
    torch.set_num_threads(a.threads)
    kernels.set_threads(a.threads)
    if a.py:
        import tracemalloc
        tracemalloc.start()
    base = _rollup()
    prev = dict(base)
    print(f"{'stage':<12}{'s':>7}{'anon':>8}{'file':>8}{'| anon':>9}{'file':>8}{'peak':>8}   (MiB over the RSS before the load)")

    def row(name: str, t0: float) -> None:
        nonlocal prev
        r = _rollup()
        print(f"{name:<12}{time.perf_counter() - t0:7.3f}{r['Anonymous'] - prev['Anonymous']:+8.1f}"
              f"{r['file'] - prev['file']:+8.1f}{r['Anonymous'] - base['Anonymous']:9.1f}"
              f"{r['file'] - base['file']:8.1f}{r['hwm'] - base['Rss']:8.1f}   {_malloc()}")
        prev = r

    # the stages of Model.__init__, one at a time (Model.load = Model.open_file + Model(g, opts))
    opts = LoadOptions(ctx=a.ctx, threads=a.threads)
    t = time.perf_counter()
    g = Model.open_file(Path(a.model), opts)
    row("open", t)
    m, stages = Model.staged(g, opts)
    total = time.perf_counter() - t
    for name, fn in stages:
        t = time.perf_counter()
        fn()
        total += time.perf_counter() - t
        row(name, t)
    print(f"{'load total':<12}{total:7.3f}")
    tok = m.tokenizer
    text = tok.encode("The quick brown fox jumps over the lazy dog. " * 200)
    toks = ([tok.bos_id] if tok.bos_id is not None else []) + text
    toks = (toks * (a.pp // max(len(toks), 1) + 1))[:a.pp]
    m.reset()
    t = time.perf_counter()
    m.eval(toks)
    row(f"pp{a.pp}", t)
    m.reset()
    m.eval(toks[:1])
    t = time.perf_counter()
    for i in range(a.tg):
        m.eval([toks[1 + i % (len(toks) - 1)]])
    row(f"tg{a.tg}", t)
    if a.py:
        import tracemalloc
        snap = tracemalloc.take_snapshot()
        print("\nlargest live Python allocation sites:")
        for s in snap.statistics("lineno")[:12]:
            print(f"  {s.size / 2**20:7.1f} MiB  {s.count:8d} blocks  {s.traceback[0]}")
    del np
    return 0


if __name__ == "__main__":
    sys.exit(main())
