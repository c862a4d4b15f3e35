"""Measurements of the offload path on a CUDA machine (docs/offload.md quotes them).

    python -m engine.offload_bench bandwidth [--layer-mib 64] [--layers 16] [--json FILE]
        H2D bandwidth: a plain pinned copy vs the staging pipeline streaming layers from a
        file-backed mmap (as GGUF weights are), with and without compute on the other stream.
    python -m engine.offload_bench reduce SRC.gguf DST.gguf --layers N
        a copy of a model with its first N repeating layers only (real weights, block_count rewritten)
    python -m engine.offload_bench model MODEL.gguf [--gpu-layers 0,4,all] [--pp 512] [--tg 64] [--device cuda]
                                                    [--torch-kernels] [--json FILE]
        the wired runtime per placement: prefill and decode tok/s, resident/staging bytes, streamed layers,
        and how many greedy tokens agree with the CPU run (first difference, if any)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np


def _timed(fn, reps: int) -> float:
    import torch
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _source_layers(n_layers: int, layer_bytes: int, tmpdir: str):
    """n_layers byte ranges of one file-backed mmap, like tensors of a GGUF (page cache hot)."""
    from engine.offload import pack_layer
    from engine.quant import GGMLType, QTensor
    path = os.path.join(tmpdir, "layers.bin")
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for _ in range(n_layers):
            f.write(rng.integers(0, 256, layer_bytes, dtype=np.uint8).tobytes())
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    per_tensor = layer_bytes // 4
    packs = {}
    for il in range(n_layers):
        base = il * layer_bytes
        tensors = {f"blk.{il}.w{j}": QTensor(f"blk.{il}.w{j}", GGMLType.Q8_0, (per_tensor // 34, 32),
                                             mm[base + j * per_tensor: base + (j + 1) * per_tensor])
                   for j in range(4)}
        packs[il] = pack_layer(il, tensors)
    return mm, packs


def bandwidth(layer_mib: int, n_layers: int, reps: int = 5) -> dict:
    import torch
    from engine.offload import TorchBackend, LayerStreamer, PinnedBuffer
    from engine.quant import dequantize_torch
    dev = torch.device("cuda")
    total = layer_mib * n_layers << 20
    res: dict = {"layer_mib": layer_mib, "layers": n_layers, "torch_threads": torch.get_num_threads()}

    pinned = PinnedBuffer(total)
    pinned.array[:] = 1
    dst = torch.empty(total, dtype=torch.uint8, device=dev)
    res["plain_pinned_gbs"] = total / _timed(lambda: dst.copy_(pinned.tensor, non_blocking=True), reps) / 1e9
    pm = torch.empty(total, dtype=torch.uint8).pin_memory()
    res["torch_pin_memory_gbs"] = total / _timed(lambda: dst.copy_(pm, non_blocking=True), reps) / 1e9
    pageable = np.ones(total, np.uint8)
    src_t = torch.from_numpy(pageable)
    res["pageable_gbs"] = total / _timed(lambda: dst.copy_(src_t), reps) / 1e9
    res["host_fill_gbs"] = total / _timed(lambda: pinned.tensor.copy_(src_t), reps) / 1e9
    del dst, pm
    pinned.close()

    with tempfile.TemporaryDirectory() as tmp:
        mm, packs = _source_layers(n_layers, layer_mib << 20, tmp)
        payload = sum(p.payload_bytes for p in packs.values())
        for chunk_mib in (1, 4, 16):
            s = LayerStreamer(TorchBackend(dev), packs, chunk_bytes=chunk_mib << 20)

            def stream_only(s=s):
                s.begin(list(packs))
                for il in packs:
                    s.acquire(il)
                    s.release(il)
            res[f"pipeline_gbs_chunk{chunk_mib}"] = payload / _timed(stream_only, reps) / 1e9
            s.close()
        s = LayerStreamer(TorchBackend(dev), packs)
        x = torch.randn(512, 32, device=dev)

        def with_compute(s=s):
            s.begin(list(packs))
            for il in packs:
                w = s.acquire(il)
                for t in w.values():                     # dequantize + a 512-row product per weight
                    wd = dequantize_torch(t.data, t.qtype, t.shape)
                    (x @ wd.t()).sum()
                s.release(il)

        def compute_only(s=s):
            for il in packs:
                w = {seg.name: s.backend.view(s.slots[0].dev, seg.offset, seg.nbytes) for seg in packs[il].segments}
                for seg in packs[il].segments:
                    wd = dequantize_torch(w[seg.name], seg.qtype, seg.shape)
                    (x @ wd.t()).sum()
        t_both = _timed(with_compute, reps)
        t_comp = _timed(compute_only, reps)
        res["pipeline_with_compute_gbs"] = payload / t_both / 1e9
        res["compute_only_ms"] = t_comp * 1e3
        res["pipeline_with_compute_ms"] = t_both * 1e3
        res["pipeline_stream_only_ms"] = payload / res["pipeline_gbs_chunk4"] / 1e9 * 1e3
        s.close()
        del mm
    res["pipeline_vs_plain_pinned"] = res["pipeline_gbs_chunk4"] / res["plain_pinned_gbs"]
    return res


def reduce_model(src: str, dst: str, n_layers: int) -> None:
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch=arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, n_layers if f.name == f"{arch}.block_count" else f.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers:
            continue
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg, a goldsmith "
          "from Mainz, combined several existing technologies into a machine that could print pages faster than "
          "any scribe. Before him, books were copied by hand")


def model_bench(path: str, gpu_layers: list[str], pp: int, tg: int, device: str, threads: int | None) -> list[dict]:
    """Prefill (pp tokens) and decode (tg tokens) speed, and greedy agreement with the CPU, per placement."""
    import torch
    from engine.runtime import LoadOptions, Model
    from engine.sampling import Sampler, SamplingParams

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    rows, ref = [], None
    for spec in ["cpu"] + gpu_layers:
        kw = {} if spec == "cpu" else {"gpu_layers": 1 << 20 if spec == "all" else int(spec), "offload_device": device}
        if spec != "cpu" and kw["gpu_layers"] == 0:
            kw["offload_stream"] = True                   # every layer on the host, streamed for prefill
        m = Model.load(path, LoadOptions(ctx=max(2048, pp + tg + 8), threads=threads, warmup=True, **kw))
        tok = m.tokenizer
        text = tok.encode("The quick brown fox jumps over the lazy dog. " * (pp // 8 + 1))[:pp]
        m.reset()
        sync()
        t0 = time.perf_counter()
        m.eval(text)
        sync()
        pp_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(tg):
            m.eval([text[i % len(text)]])
        sync()
        tg_s = time.perf_counter() - t0
        m.reset()
        toks = m.generate(tok.encode(PROMPT, add_special=True), tg, Sampler(SamplingParams(temperature=0))).tokens
        if ref is None:
            ref = toks
        first = next((i for i, (a, b) in enumerate(zip(ref, toks)) if a != b), None)
        off = m.offload
        rows.append({"placement": spec, "pp_tok_s": round(pp / pp_s, 1), "tg_tok_s": round(tg / tg_s, 1),
                     "resident_mib": round(off.resident_bytes / 2**20, 1) if off else 0,
                     "staging_mib": round(off.staging_bytes / 2**20, 1) if off else 0,
                     "streamed_layers": off.streamer.stats.layers if off and off.streamer else 0,
                     "greedy_equal": toks == ref, "first_difference": first, "warnings": m.warnings})
        m.close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.offload_bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    bw = sub.add_parser("bandwidth")
    bw.add_argument("--layer-mib", type=int, default=64)
    bw.add_argument("--layers", type=int, default=16)
    bw.add_argument("--json")
    rd = sub.add_parser("reduce")
    rd.add_argument("src")
    rd.add_argument("dst")
    rd.add_argument("--layers", type=int, required=True)
    md = sub.add_parser("model")
    md.add_argument("path")
    md.add_argument("--gpu-layers", default="0,4,all", help="comma-separated placements (0: all streamed)")
    md.add_argument("--pp", type=int, default=512)
    md.add_argument("--tg", type=int, default=64)
    md.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    md.add_argument("--threads", type=int, default=None)
    md.add_argument("--torch-kernels", action="store_true",
                    help="with --device cpu: multiply with the torch kernels a GPU runs, not the CPU's")
    md.add_argument("--json")
    args = ap.parse_args(argv)
    if args.cmd == "model":
        if args.torch_kernels:
            from engine import gpu_kernels
            gpu_kernels.TORCH_ON_CPU = True
        rows = model_bench(args.path, args.gpu_layers.split(","), args.pp, args.tg, args.device, args.threads)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        for r in rows:
            print(json.dumps(r))
    if args.cmd == "reduce":
        reduce_model(args.src, args.dst, args.layers)
    if args.cmd == "bandwidth":
        res = bandwidth(args.layer_mib, args.layers)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        for k, v in res.items():
            print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
