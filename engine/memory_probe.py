"""Measuring what the planner predicts, each in a fresh process (peak RSS is per process):

    python -m engine.memory_probe baseline                 RSS of a process that imported the engine's libraries
    python -m engine.memory_probe peak MODEL [--ctx N] [--no-mmap] [--kv-type T] [-n 8] [--fill]
                                                           load with Model.load, generate, report ru_maxrss
    python -m engine.memory_probe table MODEL:CTX[:no-mmap] ...   predicted vs measured, as a Markdown table

`measure_*` run those in subprocesses and return plain dicts; tests and docs/memory.md use them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

# What the engine process imports before it loads a model (engine/runtime.py's imports and their own).
RUNTIME_IMPORTS = ("torch", "numpy", "engine.kernels", "engine.gguf", "engine.quant", "engine.tokenizer",
                   "engine.templates", "engine.sampling")
PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


def _maxrss() -> int:
    """Peak RSS of this process's own address space: VmHWM. ru_maxrss is the same number for a process
    started from a small shell, but after fork/vfork + exec Linux carries the spawning process's peak
    into it (a child of a 700 MiB test runner reports at least 700 MiB), so it is only the fallback."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB


def _baseline() -> dict:
    import importlib
    for name in RUNTIME_IMPORTS:
        importlib.import_module(name)
    return {"peak_rss": _maxrss()}


def _peak(model: str, ctx: int, mmap: bool, kv_type: str, n: int, threads: int | None, fill: bool = False) -> dict:
    from engine.runtime import LoadOptions, Model
    from engine.sampling import Sampler, SamplingParams
    m = Model.load(model, LoadOptions(ctx=ctx, mmap=mmap, kv_type=kv_type, threads=threads))
    after_load = _maxrss()
    ids = m.tokenizer.encode(PROMPT, add_special=True)
    if fill:                            # a prompt that leaves room for only the n generated tokens
        ids = (ids * (ctx // len(ids) + 1))[:ctx - n - 1]
    m.generate(ids, n, Sampler(SamplingParams(temperature=0.0, seed=0)))
    return {"peak_rss": _maxrss(), "peak_rss_after_load": after_load, "prompt_tokens": len(ids)}


def _run(argv: list[str], timeout: float) -> dict:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "engine.memory_probe", *argv], capture_output=True, text=True,
                       timeout=timeout, cwd=root, env=env)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe {' '.join(argv)} failed: {tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure_baseline(timeout: float = 120) -> dict:
    return _run(["baseline"], timeout)


def measure_peak(model, ctx: int, *, mmap: bool = True, kv_type: str = "f16", n: int = 8,
                 threads: int | None = None, fill: bool = False, timeout: float = 300) -> dict:
    argv = ["peak", str(model), "--ctx", str(ctx), "--kv-type", kv_type, "-n", str(n)] + (["--fill"] if fill else [])
    argv += [] if mmap else ["--no-mmap"]
    argv += [] if threads is None else ["--threads", str(threads)]
    return _run(argv, timeout)


def compare(model, ctx: int, *, mmap: bool = True, kv_type: str = "f16", fill: bool = False) -> dict:
    """Predicted (engine.memory.plan) and measured peak RSS of one configuration; with fill, a prompt
    fills the context and the prediction is the plan's full-context peak."""
    from engine.gguf import GGUFFile
    from engine.memory import Settings, plan
    with GGUFFile.open(model, read_data=False) as g:
        predicted = plan(g, Settings(ctx=ctx, mmap=mmap, kv_type=kv_type), free_ram=1 << 40, free_vram=None)
    measured = measure_peak(model, ctx, mmap=mmap, kv_type=kv_type, fill=fill)
    want = predicted.ram_peak_full_context if fill else predicted.ram.total
    return {"model": Path(model).name, "ctx": ctx, "mmap": mmap, "kv_type": kv_type, "fill": fill,
            "predicted": want, "measured": measured["peak_rss"],
            "error": (want - measured["peak_rss"]) / measured["peak_rss"],
            "breakdown": predicted.ram.to_json()}


def _table(specs: list[str]) -> str:
    rows = ["| model | ctx | weights | predicted MiB | measured MiB | error |", "|---|---|---|---|---|---|"]
    for spec in specs:
        path, ctx, *rest = spec.split(":")
        c = compare(path, int(ctx), mmap="no-mmap" not in rest)
        rows.append(f"| {c['model']} | {c['ctx']} | {'mmap' if c['mmap'] else 'no-mmap'} | "
                    f"{c['predicted'] / 2**20:.1f} | {c['measured'] / 2**20:.1f} | {100 * c['error']:+.1f}% |")
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.memory_probe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("baseline")
    p = sub.add_parser("peak")
    p.add_argument("model")
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--no-mmap", action="store_true")
    p.add_argument("--kv-type", default="f16")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--fill", action="store_true", help="a prompt that fills the context")
    p = sub.add_parser("table")
    p.add_argument("specs", nargs="+", help="MODEL:CTX or MODEL:CTX:no-mmap")
    a = ap.parse_args(argv)
    if a.cmd == "baseline":
        print(json.dumps(_baseline()))
    elif a.cmd == "peak":
        print(json.dumps(_peak(a.model, a.ctx, not a.no_mmap, a.kv_type, a.n, a.threads, a.fill)))
    else:
        print(_table(a.specs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
