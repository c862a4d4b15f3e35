"""`cellar bench`: load time, prefill and decode speed and memory, llama-bench style (pp N / tg M).

The figures mean the same as the peer's (../shared/peer/llamacpp_bench.py): `load_s` is the model
load in an already started process, `base_rss_mib` the RSS before the model loads, `peak_rss_mib`
the process's peak. Prefill evaluates `pp` tokens in one call; decode evaluates `tg` single tokens.
"""
from __future__ import annotations

import time
from pathlib import Path


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def _peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM); ru_maxrss would report the parent's if it was larger."""
    return _status_mib("VmHWM")


def run_bench(path: Path, *, pp: int, tg: int, threads: int, ctx: int | None, mode: str,
              kv_type: str = "f16", gpu_layers: int = 0, warn=None) -> dict:
    import torch  # noqa: F401  (imported before the baseline, as the peer imports llama_cpp first)

    from engine.ops import prefill_path
    from engine.runtime import LoadOptions, Model
    base_rss = _rss_mib()
    opts = LoadOptions(ctx=ctx or max(2048, pp + tg + 8), threads=threads, mmap=mode != "no-mmap",
                       mlock=mode == "mlock", kv_type=kv_type, gpu_layers=gpu_layers)
    t0 = time.perf_counter()
    model = Model.load(path, opts)
    load_s = time.perf_counter() - t0
    for w in model.warnings if warn else ():
        warn(f"warning: {w}")
    tok = model.tokenizer
    text = tok.encode("The quick brown fox jumps over the lazy dog. " * 200, add_special=False)
    bos = [tok.bos_id] if tok.bos_id is not None and tok.bos_id >= 0 else []
    toks = (bos + text)[:pp]
    while len(toks) < pp:
        toks += text[: pp - len(toks)]

    model.reset()
    t = time.perf_counter()
    model.eval(toks[:1])
    ttft_s = time.perf_counter() - t

    model.reset()
    t = time.perf_counter()
    model.eval(toks)
    pp_s = time.perf_counter() - t

    model.reset()
    model.eval(toks[:1])
    t = time.perf_counter()
    for i in range(tg):
        model.eval([toks[1 + (i % (len(toks) - 1))]])
    tg_s = time.perf_counter() - t
    out = {
        "engine": "cellar", "model": path.name, "threads": threads, "mode": mode,
        "load_s": round(load_s, 3), "ttft_s": round(ttft_s, 4),
        "pp": pp, "pp_tok_s": round(pp / pp_s, 1), "tg": tg, "tg_tok_s": round(tg / tg_s, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "base_rss_mib": round(base_rss, 1),
        "gpu_layers": model.offload.placement.n_gpu if model.offload is not None else 0,
        "prefill": prefill_path(model.net.matrices()),
    }
    rep = getattr(model.gguf, "mlock_report", None)
    if rep is not None:
        out["mlock_locked"] = bool(getattr(rep, "locked", False))
    model.close()
    return out
