#!/usr/bin/env python3
"""Prefill and decode speed of one engine over prompt lengths and thread counts, the model loaded once.

    python tools/speed_sweep.py --engine cellar MODEL.gguf --pp 32 128 512 --threads 1 2 --tg 32
    /tmp/llamacpp-peer/bin/python tools/speed_sweep.py --engine llama.cpp MODEL.gguf ...

Prints one JSON object: {"engine", "model", "points": [{"threads", "pp", "pp_tok_s", "tg", "tg_tok_s"}]}.
The llama.cpp side runs under the peer's interpreter (llama-cpp-python) and imports nothing of Cellar.
Prompts are the same text both engines' benchmarks use. tools/speed_plot.py runs both and draws them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TEXT = "The quick brown fox jumps over the lazy dog. " * 200


def _prompt(ids: list[int], bos: int | None, n: int) -> list[int]:
    toks = ([bos] if bos is not None and bos >= 0 else []) + ids
    while len(toks) < n:
        toks += ids
    return toks[:n]


class Cellar:
    def __init__(self, model: str, ctx: int):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from engine import kernels
        from engine.runtime import LoadOptions, Model
        self.kernels = kernels
        self.m = Model.load(model, LoadOptions(ctx=ctx, threads=2))
        tok = self.m.tokenizer
        self.ids = tok.encode(TEXT, add_special=False)
        self.bos = tok.bos_id

    def threads(self, n: int) -> None:
        self.kernels.set_threads(n)

    def prefill(self, toks: list[int]) -> None:
        self.m.reset()
        self.m.eval(toks)

    def decode(self, tok: int) -> None:
        self.m.eval([tok])


class LlamaCpp:
    def __init__(self, model: str, ctx: int):
        from llama_cpp import Llama
        self.model, self.ctx = model, ctx
        self.llm = None
        self.threads(2)
        self.ids = self.llm.tokenize(TEXT.encode(), add_bos=False)
        self.bos = self.llm.token_bos()

    def threads(self, n: int) -> None:
        from llama_cpp import Llama
        self.llm = None                     # thread counts are fixed per context: a new one
        self.llm = Llama(self.model, n_ctx=self.ctx, n_threads=n, n_threads_batch=n, n_batch=512,
                         verbose=False, logits_all=False)

    def prefill(self, toks: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(toks)

    def decode(self, tok: int) -> None:
        self.llm.eval([tok])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--engine", choices=["cellar", "llama.cpp"], required=True)
    ap.add_argument("--pp", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--tg", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    ctx = max(2048, max(a.pp) + a.tg + 8)
    eng = (Cellar if a.engine == "cellar" else LlamaCpp)(a.model, ctx)
    points = []
    for nt in a.threads:
        eng.threads(nt)
        for pp in a.pp:
            toks = _prompt(eng.ids, eng.bos, pp)
            t = time.perf_counter()
            eng.prefill(toks)
            pp_s = time.perf_counter() - t
            t = time.perf_counter()
            for i in range(a.tg):
                eng.decode(toks[1 + i % (len(toks) - 1)])
            tg_s = time.perf_counter() - t
            points.append({"threads": nt, "pp": pp, "pp_tok_s": round(pp / pp_s, 1), "tg": a.tg,
                           "tg_tok_s": round(a.tg / tg_s, 1)})
    print(json.dumps({"engine": a.engine, "model": Path(a.model).name, "points": points}))


if __name__ == "__main__":
    main()
