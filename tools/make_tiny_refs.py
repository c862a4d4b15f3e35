"""Regenerate tests/data/tiny_refs.json: llama.cpp's logits for tiny models with random weights: llama
ones whose RoPE is scaled, by a rope_freqs tensor (Llama 3.1 and later) and by linear scaling in the
metadata, a Qwen3 (per-head Q / K norms, neox RoPE, its own head size, tied output head) and a Qwen2
(Q / K / V biases, neox RoPE).

    .venv/bin/python tools/make_tiny_refs.py [--peer /tmp/llamacpp-peer/bin/python]

The models are made by tests/ggufgen.py (random weights, fixed seed) both here and in the test, and
handed to llama.cpp (llama-cpp-python, in its own interpreter: --peer-worker) with token ids, so the
comparison is of the RoPE alone. The JSON is committed: the tests need no peer.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "tiny_refs.json"
IDS = [1] + [3 + (7 * i) % 61 for i in range(47)]          # 48 tokens of the 64-token vocabulary
LAST = 4                                                   # the logits of the last rows kept
CASES = {
    "plain": {},                                           # the two engines' agreement without scaling
    "rope_freqs": {"rope_freqs": [1.0, 1.0, 1.5, 2.0, 4.0, 8.0, 8.0, 32.0]},
    "linear": {"metadata": {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}},
    "qwen3": {"arch": "qwen3", "qk_norm": True, "head_dim": 32, "tied": True},
    "qwen2": {"arch": "qwen2", "qkv_bias": True, "tied": True},
}


def model(folder: Path, case: str) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.ggufgen import tiny_llama
    return tiny_llama(folder / f"{case}.gguf", seed=7, **CASES[case])


def peer_worker() -> None:
    import llama_cpp
    job = json.loads(sys.stdin.read())
    llm = llama_cpp.Llama(model_path=job["path"], n_ctx=128, n_batch=64, n_threads=1, logits_all=True,
                          verbose=False)
    llm.eval(job["ids"])
    rows = [[round(float(v), 5) for v in llm.scores[i]] for i in range(len(job["ids"]) - LAST, len(job["ids"]))]
    print(json.dumps({"rows": rows, "version": llama_cpp.__version__}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", default="/tmp/llamacpp-peer/bin/python")
    ap.add_argument("--peer-worker", action="store_true")
    a = ap.parse_args()
    if a.peer_worker:
        peer_worker()
        return
    out = {"ids": IDS, "last": LAST, "cases": {}}
    with tempfile.TemporaryDirectory() as d:
        for case in CASES:
            path = model(Path(d), case)
            r = subprocess.run([a.peer, __file__, "--peer-worker"], input=json.dumps({"path": str(path), "ids": IDS}),
                               capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            out["cases"][case] = res["rows"]
            out["peer_version"] = res["version"]
    OUT.write_text(json.dumps(out) + "\n")
    print(f"wrote {OUT} ({', '.join(CASES)})")


if __name__ == "__main__":
    main()
