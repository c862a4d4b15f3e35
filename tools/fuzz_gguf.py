"""Longer GGUF fuzzing campaigns than the test suite runs, and the regression corpus.

    python tools/fuzz_gguf.py 5000                 # 5000 random cases (seed from the clock)
    python tools/fuzz_gguf.py 5000 --seed 7 --real # reproducible; 5 % of cases on the real models' metadata
    python tools/fuzz_gguf.py --write-corpus       # regenerate tests/data/fuzz_corpus from tests/fuzzgguf.CORPUS

Each case is a semantic lie (tests/fuzzgguf.mutate), raw byte edits, or a cut at a section boundary,
run through the reader, planner, summary, tokenizer, template, load (warmup off) and one token under
an address-space cap. Prints one JSON line: cases, outcomes, findings (each with its reproduction),
the slowest case and the largest peak-RSS growth. Exit status 1 when anything broke the contract.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzzgguf import (AddressSpaceCap, Finding, mutate, mutate_bytes, run_case,  # noqa: E402
                            section_boundaries, seed_docs, write_corpus)

CORPUS = ROOT / "tests" / "data" / "fuzz_corpus"


def real_models() -> list[Path]:
    from engine.pull import pull
    return [Path(pull("smollm2")), Path(pull("gemma3"))]


def campaign(n: int, seed: int, real: bool, work: Path, save: Path | None) -> dict:
    seeds = seed_docs(work / "seeds", real_models() if real else [])
    tiny = [k for k in seeds if not k.startswith("real_")]
    big = [k for k in seeds if k.startswith("real_")]
    for k in tiny:
        run_case(seeds[k].write(work / f"warm_{k}.gguf"))
    rng = random.Random(seed)
    out = {"cases": 0, "seed": seed, "outcomes": {}, "findings": [], "slowest": [0.0, ""], "largest": [0, ""]}
    t_start = time.perf_counter()
    with AddressSpaceCap(2 << 30):
        for i in range(n):
            name = rng.choice(big) if big and rng.random() < 0.05 else rng.choice(tiny)
            doc = seeds[name]
            path = work / "case.gguf"
            kind = rng.random()
            if kind < 0.6:
                d, what = mutate(doc, rng, rng.choice([1, 1, 2, 3]))
                d.write(path)
            elif kind < 0.85:
                raw = doc.to_bytes() if not doc.pad_to else doc.header_bytes()
                nb = rng.randrange(1, 9)
                path.write_bytes(mutate_bytes(raw, rng, nb, limit=len(doc.header_bytes())))
                what = [f"{nb} byte edits"]
            else:
                raw = doc.to_bytes() if not doc.pad_to else doc.header_bytes()
                cut = rng.choice(section_boundaries(doc))
                path.write_bytes(raw[:cut])
                what = [f"cut at {cut}"]
            label = f"#{i} {name}: {'; '.join(what)}"
            try:
                case = run_case(path, load=not name.startswith("real_"))
            except Finding as f:
                out["findings"].append({"case": label, "error": str(f)})
                if save:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"finding_{i}.gguf").write_bytes(path.read_bytes())
                continue
            finally:
                out["cases"] += 1
            out["outcomes"][case.outcome] = out["outcomes"].get(case.outcome, 0) + 1
            if case.seconds > out["slowest"][0]:
                out["slowest"] = [round(case.seconds, 4), label]
            if case.rss_growth > out["largest"][0]:
                out["largest"] = [case.rss_growth, label]
    out["crashes"] = len(out["findings"])
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    out["largest_mib"] = round(out["largest"][0] / 2**20, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=1000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--real", action="store_true", help="also mutate the real models' metadata (5 %% of cases)")
    ap.add_argument("--save", type=Path, default=None, help="keep each finding's file here")
    ap.add_argument("--write-corpus", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.write_corpus:
            for old in CORPUS.glob("*.gguf"):
                old.unlink()
            manifest = write_corpus(CORPUS, Path(tmp))
            (CORPUS / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            size = sum(f.stat().st_size for f in CORPUS.glob("*.gguf"))
            print(json.dumps({"corpus_files": len(manifest), "bytes": size}))
            return 0
        seed = args.seed if args.seed is not None else int(time.time())
        out = campaign(args.n, seed, args.real, Path(tmp), args.save)
    print(json.dumps(out))
    return 1 if out["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
