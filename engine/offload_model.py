"""Attaching GPU offload to a loaded model (engine/runtime.py calls `attach` once, after the KV cache).

`--gpu-layers N` with N > 0 builds an Offload on the device: the last N layers' raw blocks (norm vectors
included) and KV rows in VRAM, the rest streamed for prefill. Without CUDA it warns once, as llama.cpp
does, and the model runs on the CPU. `offload_device="cpu"` (tests) drives the whole offload path with
the CPU standing in for the device, so the wiring is exercised where there is no GPU.
"""
from __future__ import annotations

import logging

import torch

from engine.offload import placement_for
from engine.offload_runtime import Offload

log = logging.getLogger("cellar.offload")

DEVICES = ("cuda", "cpu")


def no_gpu_warning(gpu_layers: int) -> str:
    return (f"no usable GPU found (torch sees no CUDA device): --gpu-layers {gpu_layers} is ignored and every "
            "layer runs on the CPU")


def layer_tensors(net) -> list[dict]:
    """Every tensor of each repeating layer as raw blocks (QTensor), by the short names `block` uses."""
    out: list[dict] = [{} for _ in range(net.hp.n_layer)]
    for name in net.g.tensors:
        if name.startswith("blk."):
            il, short = name[4:].split(".", 1)
            if il.isdigit() and int(il) < len(out):
                out[int(il)][short.removesuffix(".weight")] = net.qtensor(name)
    return out


def attach(net, kv, opts) -> tuple[Offload | None, list[str]]:
    """Build net's Offload for opts (gpu_layers, offload_device, offload_stream) and move the resident
    layers' KV rows to the device. Returns (the Offload or None, warnings to show)."""
    stream = getattr(opts, "offload_stream", None)
    if opts.gpu_layers <= 0 and not stream:
        return None, []
    device = getattr(opts, "offload_device", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        msg = no_gpu_warning(opts.gpu_layers)
        log.warning(msg)
        return None, [msg]
    off = Offload(layer_tensors(net), {"output": net.output, "output_norm": net.qtensor("output_norm.weight")},
                  placement_for(net.hp.n_layer, opts.gpu_layers, stream), device,
                  host_weights=net.layers, host_output={"output": net.output, "output_norm": net.output_norm})
    off.place_kv(kv)
    net.offload = off
    log.info("offload on %s: layers %s resident, %s streamed for prefill", off.device,
             off.placement.gpu_layer_ids, off.placement.host_layer_ids if off.streamer else [])
    return off, []
