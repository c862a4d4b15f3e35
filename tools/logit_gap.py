"""Cellar's logits against llama.cpp's, position by position, with llama.cpp's greedy tokens fed back.

    .venv/bin/python tools/logit_gap.py --dump            # once: llama.cpp's full logits (the peer)
    .venv/bin/python tools/logit_gap.py [--models smollm2] [--cases plain,chat] [--prefill-gemv]

The prompts and tokens are those of tests/data/greedy_refs.json (f16 KV); --dump runs the peer
(llama-cpp-python, non-flash attention, ubatch 512, 1 thread: the refs' settings) on each prompt and
stores the logits of every generated step under --cache. The comparison then loads Cellar once per
model and reports, per prompt: the tokens matched before Cellar's argmax first differs from
llama.cpp's token, and over all steps the gap error (|our gap between llama.cpp's top two - its gap|,
as tests/engine/greedy_check.py measures it), the largest |logit difference| over the vocabulary, and
how many steps gave bit-identical logits. A continuous measure of how closely the arithmetic follows
llama.cpp's: a rounding change shows here long before it flips a token.

--gemv-refs writes tests/data/llamacpp_gemv.npz: for one token through llama.cpp (its eval callback),
the input and output of a few matrix products, one per weight type the models hold that llama.cpp
runs with its plain dot products (not its repacked Q4_K), for tests/native/test_llamacpp_gemv.py.

--prefill-gemv runs the prompt through the GEMV on the raw blocks (activations quantized to q8 like
llama.cpp's batched matmul of these types) instead of dequantize + matmul: slow, for measuring only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFS = ROOT / "tests" / "data" / "greedy_refs.json"
CACHE = Path("/tmp/cellar_peer_logits")


def peer_worker() -> None:
    """In llama-cpp-python's interpreter: job on stdin, logits written as .npy files."""
    import llama_cpp
    import numpy as np
    job = json.load(sys.stdin)
    llm = llama_cpp.Llama(model_path=job["path"], n_ctx=job["n_ctx"], n_batch=512, n_ubatch=512, n_threads=1,
                          n_threads_batch=1, type_k=1, type_v=1, flash_attn=False, logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()
    for c in job["cases"]:
        llm.reset()
        llm._ctx.kv_cache_clear()
        llm.eval(c["prompt"])
        out = np.empty((len(c["tokens"]), n_vocab), dtype=np.float32)
        for i, tok in enumerate(c["tokens"]):
            ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            out[i] = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
            if i < len(c["tokens"]) - 1:
                llm.eval([tok])
        np.save(c["out"], out)
        print(f"  {c['out']}", file=sys.stderr, flush=True)


# (model, layer, weight, llama.cpp's input node, its output node): Q4_1, Q8_0 / Q5_0 / Q6_K, both q8 kinds
GEMV_CASES = [("smollm2", 0, "attn_q", "attn_norm", "Qcur"), ("smollm2", 1, "ffn_down", "ffn_swiglu", "ffn_out"),
              ("gemma3", 0, "attn_q", "attn_norm", "Qcur"), ("gemma3", 0, "attn_v", "attn_norm", "Vcur"),
              ("gemma3", 0, "ffn_down", "ffn_geglu", "ffn_out")]


def peer_nodes() -> None:
    """In llama-cpp-python's interpreter: evaluate job["tokens"], return the named f32 nodes' values."""
    import ctypes

    import llama_cpp as L
    import numpy as np

    class Tensor(ctypes.Structure):          # struct ggml_tensor (ggml.h), up to its name
        _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                    ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                    ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                    ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]

    job = json.load(sys.stdin)
    want, got = set(job["nodes"]), {}

    def cb(t, ask, _):
        tt = ctypes.cast(t, ctypes.POINTER(Tensor)).contents
        name = tt.name.decode()
        if ask:
            return name in want
        if name in want and name not in got and tt.type == 0:     # the first f32 node of that name
            n = tt.ne[0] * tt.ne[1] * tt.ne[2] * tt.ne[3]
            got[name] = np.ctypeslib.as_array(ctypes.cast(tt.data, ctypes.POINTER(ctypes.c_float)), (n,)).tolist()
        return True

    fn = L.ggml_backend_sched_eval_callback(cb)
    L.llama_backend_init()
    model = L.llama_model_load_from_file(job["path"].encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 256, 512, 512, 1, 1
    cp.type_k = cp.type_v = 1
    cp.flash_attn_type = 0
    cp.cb_eval = fn
    ctx = L.llama_init_from_model(model, cp)
    toks = (L.llama_token * len(job["tokens"]))(*job["tokens"])
    if L.llama_decode(ctx, L.llama_batch_get_one(toks, len(job["tokens"]))) != 0:
        sys.exit("llama_decode failed")
    json.dump(got, sys.stdout)


def gemv_refs(peer: str, out: Path) -> None:
    import numpy as np

    from engine.pull import pull
    arrays = {}
    for model in ("smollm2", "gemma3"):
        cases = [c for c in GEMV_CASES if c[0] == model]
        nodes = sorted({f"{n}-{il}" for _, il, _, a, b in cases for n in (a, b)})
        job = {"path": str(pull(model)), "tokens": [2], "nodes": nodes}
        r = subprocess.run([peer, __file__, "--peer-nodes"], input=json.dumps(job), capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"error: the peer failed on {model}:\n{r.stderr[-2000:]}")
        got = json.loads(r.stdout)
        for _, il, w, a, b in cases:
            arrays[f"{model}|blk.{il}.{w}.weight|x"] = np.array(got[f"{a}-{il}"], dtype=np.float32)
            arrays[f"{model}|blk.{il}.{w}.weight|y"] = np.array(got[f"{b}-{il}"], dtype=np.float32)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}", file=sys.stderr)


def dump(doc: dict, models: list[str], peer: str, cache: Path) -> None:
    from engine.pull import pull
    cache.mkdir(parents=True, exist_ok=True)
    for model in models:
        m = doc["models"][model]
        cases = [{"prompt": m["prompts"][c], "tokens": r["tokens"], "out": str(cache / f"{model}_{c}.npy")}
                 for c, r in m["kv"]["f16"]["runs"].items()]
        job = {"path": str(pull(model)), "n_ctx": m["n_ctx"], "cases": cases}
        r = subprocess.run([peer, __file__, "--peer-worker"], input=json.dumps(job), text=True, check=False)
        if r.returncode:
            sys.exit(f"error: the peer failed on {model} (rc={r.returncode})")


def compare(doc: dict, models: list[str], cases: list[str] | None, cache: Path, threads: int,
            prefill_gemv: bool) -> dict:
    import numpy as np

    from engine import ops
    from engine.pull import pull
    from engine.runtime import LoadOptions, Model
    if prefill_gemv:
        ops.GEMV_MAX_ROWS = 1 << 30
    report = {}
    for model in models:
        m = doc["models"][model]
        mdl = Model.load(pull(model), LoadOptions(ctx=1024, threads=threads, warmup=False))
        gaps, maxd, exact, per_case = [], [], 0, {}
        for case, ref in m["kv"]["f16"]["runs"].items():
            if cases and case not in cases:
                continue
            peer = np.load(cache / f"{model}_{case}.npy")
            mdl.reset()
            logits = mdl.eval(m["prompts"][case])
            first = None
            case_gaps = []
            for i, tok in enumerate(ref["tokens"]):
                ours = logits.float().numpy()
                (a, la), (b, lb) = ref["top"][i][:2]
                case_gaps.append(abs(float(ours[a] - ours[b]) - (la - lb)))
                d = np.abs(ours - peer[i])
                maxd.append(float(d.max()))
                exact += int(d.max() == 0)
                if first is None and int(np.argmax(ours)) != tok:
                    first = i
                if i < len(ref["tokens"]) - 1:
                    logits = mdl.eval([tok])
            gaps += case_gaps
            per_case[case] = {"matched": len(ref["tokens"]) if first is None else first,
                              "gap_median": round(float(np.median(case_gaps)), 4),
                              "gap_max": round(float(np.max(case_gaps)), 4)}
        mdl.close()
        g, md = np.array(gaps), np.array(maxd)
        report[model] = {"cases": per_case, "steps": len(g), "exact_steps": exact,
                         "gap_median": round(float(np.median(g)), 4), "gap_p90": round(float(np.percentile(g, 90)), 4),
                         "gap_max": round(float(g.max()), 4), "maxdiff_median": round(float(np.median(md)), 4),
                         "maxdiff_p90": round(float(np.percentile(md, 90)), 4)}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", action="store_true", help="store llama.cpp's logits (runs the peer)")
    ap.add_argument("--peer", default="/tmp/llamacpp-peer-avx2/bin/python", help="llama-cpp-python's interpreter")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--cases", default="", help="comma-separated prompt names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-gemv", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--gemv-refs", action="store_true", help="write tests/data/llamacpp_gemv.npz (runs the peer)")
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--peer-nodes", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer_worker:
        peer_worker()
        return
    if a.peer_nodes:
        peer_nodes()
        return
    sys.path.insert(0, str(ROOT))
    if a.gemv_refs:
        gemv_refs(a.peer, ROOT / "tests" / "data" / "llamacpp_gemv.npz")
        return
    doc = json.loads(REFS.read_text())
    models = a.models.split(",")
    if a.dump:
        dump(doc, models, a.peer, a.cache)
        return
    t0 = time.time()
    rep = compare(doc, models, [c for c in a.cases.split(",") if c] or None, a.cache, a.threads, a.prefill_gemv)
    for model, r in rep.items():
        matched = " ".join(f"{c}={v['matched']}" for c, v in r["cases"].items())
        print(f"{model}: matched {matched}")
        print(f"  gap error median {r['gap_median']} p90 {r['gap_p90']} max {r['gap_max']}; "
              f"max|dlogit| median {r['maxdiff_median']} p90 {r['maxdiff_p90']}; "
              f"bit-identical steps {r['exact_steps']}/{r['steps']}")
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps(rep, indent=1) + "\n")


if __name__ == "__main__":
    main()
