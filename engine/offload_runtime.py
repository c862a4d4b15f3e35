"""The runtime's handle on offload: resident layers uploaded at load, host layers packed for streaming,
and per step the device each layer runs on and the weights it uses there.

    off = Offload(layer_tensors, output_tensors, Placement(n_layers, gpu_layers), device="cuda")
    with off.step(n_tokens) as st:
        for il in range(n_layers):
            x = x.to(st.device_of(il))
            w = st.weights(il)                 # QTensor (host) or SlotTensor (VRAM) by tensor name
            x = block(x, w, ...)               # KV: off.kv_device(il); a streamed layer's new cells
            st.done(il)                        #     go home through st.write_back(host_view, new)
        x = x.to(st.output_device)

Everything a step needs on the device was allocated at load (resident buffers, two slots, two
page-locked staging buffers); a step allocates only torch's transient scratch.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from engine.gpu_kernels import ResidentLayer
from engine.offload import (CHUNK_BYTES, Backend, LayerStreamer, Placement, SlotTensor, TorchBackend, VramPlan,
                            pack_layer, plan_vram)
from engine.quant import QTensor

CPU = torch.device("cpu")


class Offload:
    def __init__(self, layer_tensors: Sequence[Mapping[str, QTensor]], output_tensors: Mapping[str, QTensor],
                 placement: Placement, device: str | torch.device = "cuda", backend: Backend | None = None,
                 chunk_bytes: int = CHUNK_BYTES):
        if placement.n_layers != len(layer_tensors):
            raise ValueError(f"placement is for {placement.n_layers} layers, the model has {len(layer_tensors)}")
        self.placement = placement
        self.device = torch.device(device)
        self.host_layers = list(layer_tensors)
        self.host_output = dict(output_tensors)
        self.resident = {il: ResidentLayer.upload(il, layer_tensors[il], self.device)
                         for il in placement.gpu_layer_ids}
        self.output: Mapping[str, QTensor | SlotTensor] = self.host_output
        self._output_layer = None
        if placement.output_on_gpu and output_tensors:
            self._output_layer = ResidentLayer.upload(-1, output_tensors, self.device)
            self.output = self._output_layer.tensors
        self.streamer = None
        if placement.streams_host_layers:
            packs = {il: pack_layer(il, layer_tensors[il]) for il in placement.host_layer_ids}
            self.streamer = LayerStreamer(backend or TorchBackend(self.device), packs, chunk_bytes)

    @property
    def output_device(self) -> torch.device:
        return self.device if self._output_layer is not None else CPU

    def kv_device(self, il: int) -> torch.device:
        """Where layer il's KV cache lives: VRAM for resident layers, host memory for the others."""
        return self.device if il in self.resident else CPU

    def step(self, n_tokens: int) -> "OffloadStep":
        return OffloadStep(self, n_tokens)

    def vram_plan(self, *, kv_bytes_per_layer: Sequence[int], ubatch: int, activation_floats_per_token: int) -> VramPlan:
        sizes = [{n: (t.nbytes, tuple(t.shape)) for n, t in layer.items()} for layer in self.host_layers]
        out = {n: (t.nbytes, tuple(t.shape)) for n, t in self.host_output.items()}
        return plan_vram(sizes, out, self.placement, kv_bytes_per_layer=kv_bytes_per_layer, ubatch=ubatch,
                         activation_floats_per_token=activation_floats_per_token)

    @property
    def resident_bytes(self) -> int:
        extra = self._output_layer.nbytes if self._output_layer is not None else 0
        return sum(r.nbytes for r in self.resident.values()) + extra

    def close(self) -> None:
        if self.streamer is not None:
            self.streamer.close()
            self.streamer = None
        self.resident.clear()
        self._output_layer = None
        self.output = self.host_output


class OffloadStep:
    """One forward step's placement: which layers run where, and their weights there."""

    def __init__(self, off: Offload, n_tokens: int):
        self.off = off
        self.streamed = set(off.placement.streamed_layers(n_tokens)) if off.streamer is not None else set()
        self.gpu = off.placement.uses_gpu(n_tokens) and (bool(self.streamed) or bool(off.resident))
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> "OffloadStep":
        if self.streamed:
            self.off.streamer.begin(sorted(self.streamed))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.flush()
        finally:
            if self.streamed:
                self.off.streamer.__exit__(*exc)

    def write_back(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Copy src (computed on the device) into dst (host memory: a streamed layer's KV cells) once the
        step's work is enqueued, so the host does not wait for each layer's compute in the middle."""
        if dst.device == src.device:
            dst.copy_(src)
        else:
            self._pending.append((dst, src))

    def flush(self) -> None:
        for dst, src in self._pending:
            dst.copy_(src)
        self._pending.clear()

    def device_of(self, il: int) -> torch.device:
        return self.off.device if (il in self.off.resident or il in self.streamed) else CPU

    def weights(self, il: int) -> Mapping[str, QTensor | SlotTensor]:
        if il in self.off.resident:
            return self.off.resident[il].tensors
        if il in self.streamed:
            return self.off.streamer.acquire(il)
        return self.off.host_layers[il]

    def done(self, il: int) -> None:
        if il in self.streamed:
            self.off.streamer.release(il)

    @property
    def output_device(self) -> torch.device:
        return self.off.output_device

    @property
    def output_weights(self) -> Mapping[str, QTensor | SlotTensor]:
        return self.off.output
