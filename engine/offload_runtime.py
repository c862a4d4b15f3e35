"""The runtime's handle on offload: resident layers uploaded at load, host layers packed for streaming,
and per step the device each layer runs on and the weights it uses there.

    off = Offload(layer_tensors, output_tensors, Placement(n_layers, gpu_layers), device="cuda")
    with off.step(n_tokens) as st:
        for il in range(n_layers):
            x = st.to_layer(il, x)             # the hidden state moves only where the device changes
            w = st.weights(il)                 # host: QTensor; device: SlotTensor (matrices), f32 (vectors)
            x = block(x, w, ...)               # KV: st.kv(cache, il, ...) stores and reads it where it lives
            st.done(il)
        x = x.to(st.output_device)

Every tensor given is packed (norm vectors too, so what is resident is exactly what the memory planner
counts); on the device a 1-D tensor is handed out as an f32 view of its bytes. `host_weights` (the
model's own per-layer dicts) are what a layer running on the CPU gets. Everything a step needs on the
device was allocated at load (resident buffers, two slots, two page-locked staging buffers); a step
allocates only torch's transient scratch. `HostStep` is the same interface with every layer on the CPU.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from engine.gpu_kernels import ResidentLayer, dense
from engine.offload import (CHUNK_BYTES, Backend, LayerStreamer, Placement, SlotTensor, TorchBackend, VramPlan,
                            pack_layer, plan_vram)
from engine.quant import QTensor

CPU = torch.device("cpu")


def _device_view(tensors: Mapping[str, SlotTensor]) -> dict[str, Any]:
    """Weights as a block uses them on the device: matrices stay blocks, vectors become f32 tensors."""
    return {n: dense(t) if len(t.shape) == 1 else t for n, t in tensors.items()}


class Offload:
    def __init__(self, layer_tensors: Sequence[Mapping[str, QTensor]], output_tensors: Mapping[str, QTensor],
                 placement: Placement, device: str | torch.device = "cuda", backend: Backend | None = None,
                 chunk_bytes: int = CHUNK_BYTES, host_weights: Sequence[Mapping[str, Any]] | None = None,
                 host_output: Mapping[str, Any] | None = None):
        if placement.n_layers != len(layer_tensors):
            raise ValueError(f"placement is for {placement.n_layers} layers, the model has {len(layer_tensors)}")
        self.placement = placement
        self.device = torch.device(device)
        self.host_layers = list(layer_tensors)
        self.host_output = dict(output_tensors)
        self.host_weights = list(host_weights) if host_weights is not None else self.host_layers
        self.host_output_weights = dict(host_output) if host_output is not None else self.host_output
        self.resident = {il: ResidentLayer.upload(il, layer_tensors[il], self.device)
                         for il in placement.gpu_layer_ids}
        self._resident_view = {il: _device_view(r.tensors) for il, r in self.resident.items()}
        self.output: Mapping[str, Any] = self.host_output_weights
        self._output_layer = None
        if placement.output_on_gpu and output_tensors:
            self._output_layer = ResidentLayer.upload(-1, output_tensors, self.device)
            self.output = _device_view(self._output_layer.tensors)
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

    def place_kv(self, kv) -> int:
        """Move the K and V rows of resident layers (engine.kv_cache.KVMemory) to the device; their bytes."""
        moved = 0
        for c in kv.caches:
            for il in c.layers:
                dev = self.kv_device(il)
                if c.k[il].device != dev:
                    c.k[il], c.v[il] = c.k[il].to(dev), c.v[il].to(dev)
                if il in self.resident:
                    moved += c.k[il].numel() * c.k[il].element_size() + c.v[il].numel() * c.v[il].element_size()
        return moved

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

    @property
    def staging_bytes(self) -> int:
        """VRAM of the two streaming slots (0 when host layers are not streamed)."""
        return 2 * self.streamer.slot_bytes if self.streamer is not None else 0

    def close(self) -> None:
        if self.streamer is not None:
            self.streamer.close()
            self.streamer = None
        self.resident.clear()
        self._resident_view.clear()
        self._output_layer = None
        self.output = self.host_output_weights


class OffloadStep:
    """One forward step's placement: which layers run where, and their weights there."""

    def __init__(self, off: Offload, n_tokens: int):
        self.off = off
        self.streamed = set(off.placement.streamed_layers(n_tokens)) if off.streamer is not None else set()
        self.gpu = off.placement.uses_gpu(n_tokens) and (bool(self.streamed) or bool(off.resident))
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        self._copies: dict[tuple[int, torch.device], tuple[object, torch.Tensor]] = {}

    def __enter__(self) -> "OffloadStep":
        if self.streamed:
            self.off.streamer.begin(sorted(self.streamed))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.flush()
        finally:
            self._copies.clear()
            if self.streamed:
                self.off.streamer.__exit__(*exc)

    def write_back(self, dst: torch.Tensor, src: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Copy src (computed on the device) into dst (host memory: a streamed layer's KV cells), or into
        dst's rows `index`, once the step's work is enqueued, so the host does not wait for each layer's
        compute in the middle."""
        if dst.device == src.device:
            dst.copy_(src) if index is None else dst.index_copy_(0, index, src)
        else:
            self._pending.append((dst, index, src))

    def flush(self) -> None:
        for dst, index, src in self._pending:
            if index is None:
                dst.copy_(src)
            else:
                dst.index_copy_(0, index, src.to(dst.device))
        self._pending.clear()

    def on(self, t: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
        """t (a mask or a slot array: made once per step on the host) as a tensor on `device`, copied
        once per step. The entry keeps t itself, so its id is not reused by another object meanwhile."""
        if isinstance(t, torch.Tensor) and t.device == device:
            return t
        key = (id(t), device)
        hit = self._copies.get(key)
        if hit is None or hit[0] is not t:
            src = torch.from_numpy(t) if isinstance(t, np.ndarray) else t
            hit = self._copies[key] = (t, src.to(device))
        return hit[1]

    def device_of(self, il: int) -> torch.device:
        return self.off.device if (il in self.off.resident or il in self.streamed) else CPU

    def to_layer(self, il: int, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device_of(il))

    def weights(self, il: int) -> Mapping[str, Any]:
        if il in self.off.resident:
            return self.off._resident_view[il]
        if il in self.streamed:
            return _device_view(self.off.streamer.acquire(il))
        return self.off.host_weights[il]

    def done(self, il: int) -> None:
        if il in self.streamed:
            self.off.streamer.release(il)

    def kv(self, cache, il: int, slots: np.ndarray, k: torch.Tensor, v: torch.Tensor,
           n_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this ubatch's k, v [n, width] of layer il in its cells `slots` of `cache` (a KVCache) and
        return K, V of cells [0, n_kv) as f32 on k's device. A streamed layer's cells stay on the host:
        they are read to the device, the new rows added there, and sent home at the end of the step."""
        if il not in self.streamed:
            if il not in self.off.resident:             # a host layer running on the CPU
                cache.write(il, slots, k, v)
            else:                                       # rows on the device: index them there
                idx = self.on(slots, cache.k[il].device)
                cache.k[il].index_copy_(0, idx, cache._store(k))
                cache.v[il].index_copy_(0, idx, cache._store(v))
            return cache.read(il, n_kv)
        idx = torch.from_numpy(slots)
        dev_idx = self.on(slots, k.device)
        out = []
        for rows, new, width in ((cache.k[il], k, cache.k_width), (cache.v[il], v, cache.v_width)):
            stored = cache._store(new)
            cells = rows[:n_kv].to(k.device, copy=True)
            cells.index_copy_(0, dev_idx, stored)
            self.write_back(rows, stored, idx)
            out.append(cache._load(cells, width))
        return out[0], out[1]

    def store(self, cache, il: int, slots: np.ndarray, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [n, width] of layer il in `slots` where its cache lives, now (for attention that
        gathers each sequence's cells itself: Model.eval_batch); a streamed layer's rows go home at once."""
        dev = cache.k[il].device
        idx = self.on(slots, dev)
        cache.k[il].index_copy_(0, idx, cache._store(k).to(dev))
        cache.v[il].index_copy_(0, idx, cache._store(v).to(dev))

    @property
    def output_device(self) -> torch.device:
        return self.off.output_device

    @property
    def output_weights(self) -> Mapping[str, Any]:
        return self.off.output


class HostStep:
    """OffloadStep's interface for a model with every layer on the CPU (no offload)."""

    def __init__(self, layers: Sequence[Mapping[str, Any]], output: Mapping[str, Any]):
        self.layers, self.output_weights = layers, output

    def __enter__(self) -> "HostStep":
        return self

    def __exit__(self, *exc) -> None:
        pass

    output_device = CPU

    def to_layer(self, il: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def weights(self, il: int) -> Mapping[str, Any]:
        return self.layers[il]

    def done(self, il: int) -> None:
        pass

    def on(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        return t

    def kv(self, cache, il: int, slots: np.ndarray, k: torch.Tensor, v: torch.Tensor,
           n_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
        cache.write(il, slots, k, v)
        return cache.read(il, n_kv)
