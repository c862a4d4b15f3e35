"""Regenerate tests/data/greedy_refs.json: llama.cpp's greedy continuations of both real models.

    .venv/bin/python tools/make_greedy_refs.py [--peer /tmp/llamacpp-peer-avx2/bin/python]

The prompts are tokenized here with Cellar's tokenizer (token-exact with llama.cpp, tested on its own)
and handed to llama.cpp as ids, so the comparison is of the models alone. The peer (llama-cpp-python)
runs in its own interpreter: this file re-runs itself there with --peer-worker, jobs on stdin, results
on stdout. For each prompt and KV type it records the generated ids and, per step, llama.cpp's top-5
(id, logit), so a test can tell a near-tie from a real divergence. The JSON is committed: the tests
need no peer.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "greedy_refs.json"
N_GEN = 40
KV_TYPES = {"f16": 1, "bf16": 30, "q8_0": 8}          # ggml type ids
TOP = 5

STORY = (
    "The lighthouse keeper on the northern island kept a logbook for forty years. Every morning he wrote "
    "down the direction of the wind, the height of the waves and the names of the ships that passed. "
    "Most entries were short: a fishing boat heading south, a ferry late by an hour, fog until noon. "
    "But some pages were filled with careful drawings of birds he had never seen before, and notes about "
    "storms that changed the shape of the beach overnight. When he retired, the logbook was given to the "
    "museum in the harbour town, where a young historian began to read it page by page. She noticed that "
    "the keeper had recorded the same grey whale returning every spring, always in the second week of "
    "April, always swimming close to the rocks on the western side. She compared his notes with the "
    "records of the fishermen and with old newspaper reports, and slowly a picture emerged of how the sea "
    "around the island had changed: warmer summers, fewer cod, more jellyfish, and storms that arrived "
    "earlier in the autumn than they used to. Her report was published the following year, and the "
    "keeper, now eighty-three, read it aloud to his grandchildren on a windy evening in October. They asked him whether he had "
    "ever been lonely out there, and he told them that a man who counts the waves every morning is never "
    "alone, because the sea always has something new to say, even on the quietest day of the year.\n\n"
)
STORY_MORE = (
    "The museum decided to exhibit the logbook in a glass case near the entrance, open at the page with "
    "the first drawing of the whale. Visitors came from the mainland to see it, and school classes made "
    "trips to the island to climb the tower and look at the lamp. The historian organised a small "
    "conference about coastal records, inviting people who had kept diaries of tides, of birds, of "
    "weather and of harvests. A farmer brought notebooks in which his grandmother had written the date of "
    "the first frost for half a century. A retired teacher brought photographs of the same beach taken "
    "every summer since 1962. A ferry captain brought the engine logs of his ship, which, to everyone's "
    "surprise, showed how the currents had slowly shifted to the east. Together they built a timeline "
    "that no single record could have shown. The conference ended with a walk along the cliffs, and "
    "someone suggested that the island should keep a new logbook, written by everyone who lived there, "
    "so that the next generation would have an even richer picture of how the place was changing. The "
    "keeper was asked to write the first entry. He thought for a long time, then wrote the direction "
    "of the wind, the height of the waves, and the name of the ferry that was just leaving the harbour. "
    "Underneath, in smaller letters, he added a line about the whale: it had come back again, a little "
    "later than usual, but it had come back. The historian copied that line onto the first page of her "
    "next book, and the children of the island learned it by heart. Years later, when the lighthouse was "
    "automated and the tower closed to visitors, the new logbook was still kept in the village school, "
    "and every morning one of the pupils walked to the cliff to look at the sea and write down what "
    "they saw.\n\n"
)
CODE = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"
    "    a, b = 0, 1\n    for _ in range(n - 1):\n        a, b = b, a + b\n    return b\n\n\n"
    "def is_prime(n):\n"
)


def cases(model: str) -> list[dict]:
    """(name, how to build the prompt): raw text or chat messages."""
    out = [
        {"name": "plain", "raw": "The capital of France is"},
        {"name": "chat", "chat": [{"role": "user", "content": "Give me three tips for learning to play the guitar."}]},
        {"name": "code", "raw": CODE},
        {"name": "list", "raw": "Here is a list of the planets of the solar system, in order from the Sun:\n1."},
        {"name": "long", "raw": STORY + "Question: What did the historian notice in the logbook?\nAnswer:"},
    ]
    if model == "gemma3":        # past the 512-token sliding window
        out.append({"name": "past_window", "raw": STORY + STORY_MORE + "Summary of the story above:\n"})
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenize_cases(path: Path, model: str) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from types import SimpleNamespace

    from engine.gguf import GGUFFile
    from engine.prompting import chat_tokens, raw_tokens
    from engine.tokenizer import load_tokenizer
    g = GGUFFile.open(path, read_data=False)
    shim = SimpleNamespace(gguf=g, tokenizer=load_tokenizer(g))
    out = []
    for c in cases(model):
        ids = chat_tokens(shim, c["chat"]) if "chat" in c else raw_tokens(shim, c["raw"])
        out.append({"name": c["name"], "prompt": ids})
    return out


# ---- the peer side (llama-cpp-python's interpreter; imports nothing of Cellar) ----------------------
def peer_worker() -> None:
    import llama_cpp
    import numpy as np
    job = json.load(sys.stdin)
    n_ctx = max(len(c["prompt"]) for c in job["cases"]) + job["n_gen"] + 16
    results = {}
    for kv_name in job["kv_types"]:
        t = KV_TYPES[kv_name]
        llm = llama_cpp.Llama(model_path=job["path"], n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=job["threads"],
                              n_threads_batch=job["threads"], type_k=t, type_v=t, flash_attn=job["flash_attn"] or t == 8,
                              logits_all=False, verbose=False)
        n_vocab = llm.n_vocab()
        runs = []
        for c in job["cases"]:
            llm.reset()
            llm._ctx.kv_cache_clear()
            llm.eval(c["prompt"])
            gen, top = [], []
            for i in range(job["n_gen"]):
                ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)     # the last evaluated token's
                logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32)
                order = np.argsort(-logits, kind="stable")[:TOP]
                top.append([[int(j), float(logits[j])] for j in order])
                tok = int(order[0])
                gen.append(tok)
                if i < job["n_gen"] - 1:
                    llm.eval([tok])
            runs.append({"name": c["name"], "tokens": gen, "top": top})
            print(f"  {kv_name} {c['name']}: {len(c['prompt'])} + {len(gen)} tokens", file=sys.stderr, flush=True)
        results[kv_name] = {"flash_attn": bool(job["flash_attn"] or t == 8), "cases": runs}
        del llm
    json.dump({"version": llama_cpp.__version__, "n_ctx": n_ctx, "results": results}, sys.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", default="/tmp/llamacpp-peer-avx2/bin/python", help="llama-cpp-python's interpreter")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=2,
                    help="llama.cpp threads (its logits do not depend on it: 1 and 2 gave bit-identical top-5 "
                         "logits on both models; 1 is far faster on a busy machine, where its OpenMP barriers "
                         "wait for a second core; the committed refs used 1)")
    ap.add_argument("--kv-types", default="f16,bf16,q8_0")
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer_worker:
        peer_worker()
        return
    sys.path.insert(0, str(ROOT))
    from engine.pull import pull
    doc = {"n_gen": N_GEN, "models": {}}
    for model in a.models.split(","):
        path = Path(pull(model))
        job = {"path": str(path), "n_gen": N_GEN, "kv_types": a.kv_types.split(","), "flash_attn": False,
               "threads": a.threads, "cases": tokenize_cases(path, model)}
        t0 = time.time()
        r = subprocess.run([a.peer, __file__, "--peer-worker"], input=json.dumps(job), stdout=subprocess.PIPE,
                           text=True, check=False)
        if r.returncode:
            sys.exit(f"error: the peer failed on {model} (rc={r.returncode}); its messages are above")
        peer = json.loads(r.stdout)
        print(f"{model}: {len(job['cases'])} prompts x {len(job['kv_types'])} KV types in {time.time() - t0:.0f} s",
              file=sys.stderr)
        doc["peer_version"] = peer["version"]
        doc["peer_threads"] = a.threads
        doc["models"][model] = {
            "file": path.name, "sha256": sha256(path), "n_ctx": peer["n_ctx"],
            "prompts": {c["name"]: c["prompt"] for c in job["cases"]},
            "kv": {kv: {"flash_attn": res["flash_attn"],
                        "runs": {c["name"]: {"tokens": c["tokens"], "top": c["top"]} for c in res["cases"]}}
                   for kv, res in peer["results"].items()},
        }
    a.out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
