#!/usr/bin/env python3
"""Cellar's greedy agreement with llama.cpp, beside llama.cpp's agreement with itself across two builds.

    .venv/bin/python tools/greedy_agreement.py [--models smollm2,gemma3] [--kv f16,bf16,q8_0]

Two reference sets of llama.cpp's greedy ids and top-5 logits (tools/make_greedy_refs.py), same library
version, same files and prompt ids, built for two CPUs: A = tests/data/greedy_refs.json (AVX2),
B = tests/data/greedy_refs_avx512.json (AVX-512). Per model, KV type and prompt it prints the identical
prefix (tokens before the first difference, of n_gen) for A vs B, Cellar vs A and Cellar vs B, and
llama.cpp's top-two gap where each pair parts; then, per model and KV type, the gap noise: with the
reference's tokens fed back, |gap between its top two in one engine - the same gap in the other| at
every step (for A vs B only along their shared prefix, where both saw the same tokens).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.pull import KNOWN  # noqa: E402
from engine.runtime import LoadOptions, Model  # noqa: E402
from tests.engine.greedy_check import follow, gap_errors, load_refs  # noqa: E402
from tools.refs_agreement import cross_gap_errors, parting  # noqa: E402

DATA = ROOT / "tests" / "data"


def _stats(e: list[float]) -> str:
    a = np.asarray(e)
    return f"{np.median(a):.3f} / {np.percentile(a, 90):.3f} / {a.max():.3f} ({len(a)})"


def _prefix(p, n: int) -> str:
    return f"{n}" if p is None else f"{p[0]} @ {p[1]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--kv", default="f16,bf16,q8_0")
    ap.add_argument("--ctx", type=int, default=1024)
    args = ap.parse_args()
    A, B = load_refs(DATA / "greedy_refs.json"), load_refs(DATA / "greedy_refs_avx512.json")
    n_gen = A.doc["n_gen"]
    print("identical prefix of n_gen tokens; where a pair parts: step @ llama.cpp's top-two gap there")
    print("| model | KV | prompt | A vs B | Cellar vs A | Cellar vs B |\n|---|---|---|---:|---:|---:|")
    noise = []
    for model in args.models.split(","):
        path = Path.home() / ".cache" / "cellar" / "models" / KNOWN[model].filename
        for kv in args.kv.split(","):
            m = Model.load(path, LoadOptions(ctx=args.ctx, threads=2, warmup=False, kv_type=kv))
            ours = {"A": [], "B": []}
            ab = []
            for case in A.cases(model):
                prompt, ra, rb = A.prompt(model, case), A.run(model, kv, case), B.run(model, kv, case)
                cells = [_prefix(parting(ra, rb), n_gen)]
                for name, ref in (("A", ra), ("B", rb)):
                    f = follow(m, prompt, ref, 1)
                    cells.append(_prefix(None if not f.flips else (f.flips[0][0], f.flips[0][3]), n_gen))
                    ours[name] += gap_errors(m, prompt, ref)
                ab += cross_gap_errors(ra, rb)
                print(f"| {model} | {kv} | {case} | " + " | ".join(cells) + " |", flush=True)
            m.close()
            noise.append((model, kv, _stats(ab), _stats(ours["A"]), _stats(ours["B"])))
    print("\ngap noise, median / p90 / max (steps)")
    print("| model | KV | A vs B | Cellar vs A | Cellar vs B |\n|---|---|---|---|---|")
    for row in noise:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
