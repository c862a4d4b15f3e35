"""Measurements of the offload path on a CUDA machine (docs/offload.md quotes them).

    python -m engine.offload_bench bandwidth [--layer-mib 64] [--layers 16] [--json FILE]
        H2D bandwidth: a plain pinned copy vs the staging pipeline streaming layers from a
        file-backed mmap (as GGUF weights are), with and without compute on the other stream.
    python -m engine.offload_bench reduce SRC.gguf DST.gguf --layers N
        a copy of a model with its first N repeating layers only (real weights, block_count rewritten)
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
    args = ap.parse_args(argv)
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
