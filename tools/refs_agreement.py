#!/usr/bin/env python3
"""How far two sets of llama.cpp greedy references (tools/make_greedy_refs.py) agree: per model, KV type
and prompt, the first token where they part and llama.cpp's top-two gap there in each set's own logits.

    python tools/refs_agreement.py tests/data/greedy_refs.json tests/data/greedy_refs_avx512.json

The committed pair: llama-cpp-python 0.3.36 built for AVX2 (an AMD EPYC, the references the tests
follow) and for AVX-512 (an Intel Xeon with AMX). Same library version, same model files, same ids fed
in; what differs is the CPU kernels' summation order. It measures the noise any engine meets when it is
held to llama.cpp token for token.
"""
from __future__ import annotations

import argparse
import json
import statistics


def parting(a: dict, b: dict) -> tuple[int, float, float] | None:
    """(step, gap in a's logits, gap in b's logits) where two runs first differ, or None."""
    ta, tb = a["tokens"], b["tokens"]
    n = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), None)
    if n is None:
        return None
    top_a, top_b = dict(map(tuple, a["top"][n])), dict(map(tuple, b["top"][n]))
    nan = float("nan")
    return n, top_a[ta[n]] - top_a.get(tb[n], nan), top_b[tb[n]] - top_b.get(ta[n], nan)


def cross_gap_errors(a: dict, b: dict) -> list[float]:
    """Along the prefix where two runs saw the same tokens: |a's gap between its top two - b's gap
    between the same two tokens| at each step (where b's top 5 holds both)."""
    out = []
    for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])):
        (t0, l0), (t1, l1) = a["top"][i][:2]
        top_b = dict(map(tuple, b["top"][i]))
        if t0 in top_b and t1 in top_b:
            out.append(abs((l0 - l1) - (top_b[t0] - top_b[t1])))
        if x != y:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    A, B = (json.load(open(p)) for p in (args.a, args.b))
    total = parted = 0
    print("| model | KV | prompt | first differing token | gap in A | gap in B |\n|---|---|---|---:|---:|---:|")
    for model, entry in A["models"].items():
        for kv, runs in entry["kv"].items():
            for case, run in runs["runs"].items():
                total += 1
                p = parting(run, B["models"][model]["kv"][kv]["runs"][case])
                if p is not None:
                    parted += 1
                    print(f"| {model} | {kv} | {case} | {p[0]} | {p[1]:.3f} | {p[2]:.3f} |")
    print(f"\n{parted} of {total} prompt x KV-type runs part within {A['n_gen']} tokens")
    print("\ngap noise along the shared prefix: |gap between A's top two in A - the same in B|")
    print("| model | KV | steps | median | p90 | p99 | max |\n|---|---|---:|---:|---:|---:|---:|")
    for model, entry in A["models"].items():
        for kv, runs in entry["kv"].items():
            e = [x for case, run in runs["runs"].items()
                 for x in cross_gap_errors(run, B["models"][model]["kv"][kv]["runs"][case])]
            q = statistics.quantiles(e, n=100, method="inclusive") if len(e) > 1 else e * 99
            print(f"| {model} | {kv} | {len(e)} | {statistics.median(e):.3f} | {q[89]:.3f} | {q[98]:.3f} "
                  f"| {max(e):.3f} |")


if __name__ == "__main__":
    main()
