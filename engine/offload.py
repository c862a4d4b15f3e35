"""GPU offload: which layers live in VRAM, and how host-resident layers reach the GPU for big batches.

Placement follows llama.cpp: `--gpu-layers L` keeps the LAST L repeating layers in VRAM (raw GGUF
blocks as uint8 CUDA tensors, dequantized on the GPU when used) with their KV cache; the output head
joins them once every repeating layer is on the GPU. Token embeddings always stay on the host.

Host-resident layers:
- decode and other small batches (< STREAM_MIN_BATCH tokens) run them on the CPU, where the weights are;
- prefill (big batches) streams their quantized blocks to the GPU: the host copies layer k's blocks
  into one of TWO page-locked staging buffers (exact-size anonymous memory registered with
  cudaHostRegister), a dedicated copy stream moves them into one of two VRAM slots, and events order
  everything so that the copy of the next streamed layer overlaps the compute of this one.

The schedule is written against `Backend`, which has a torch implementation (`TorchBackend`: CUDA
streams, events and pinned memory on a GPU; synchronous copies on the CPU) and a CPU
simulation (`SimBackend`, engine/offload_sim.py) that records the order of operations and runs the
two streams in adversarial or random interleavings, so the ordering rules are unit-tested without a GPU.
"""
from __future__ import annotations

import mmap
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from engine.quant import BlockShape, GGMLType, QTensor

STREAM_MIN_BATCH = 32          # llama.cpp's threshold for sending host weights to the GPU
SLOT_ALIGN = 256               # byte alignment of each tensor inside a packed layer
CHUNK_BYTES = 4 << 20          # host fill / H2D copy granularity inside one layer


# ---- placement --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Which repeating layers are VRAM-resident. `stream` says whether host layers are streamed to the
    GPU for big batches (on by default whenever a GPU is in use at all)."""
    n_layers: int
    gpu_layers: int
    stream: bool | None = None

    @property
    def n_gpu(self) -> int:
        return max(0, min(self.gpu_layers, self.n_layers))

    @property
    def first_gpu(self) -> int:
        return self.n_layers - self.n_gpu

    def on_gpu(self, il: int) -> bool:
        return il >= self.first_gpu

    @property
    def gpu_layer_ids(self) -> list[int]:
        return list(range(self.first_gpu, self.n_layers))

    @property
    def host_layer_ids(self) -> list[int]:
        return list(range(self.first_gpu))

    @property
    def output_on_gpu(self) -> bool:
        return self.n_gpu == self.n_layers and self.n_layers > 0

    @property
    def streams_host_layers(self) -> bool:
        wanted = self.n_gpu > 0 if self.stream is None else self.stream
        return wanted and bool(self.host_layer_ids)

    def uses_gpu(self, n_tokens: int) -> bool:
        """Whether a batch of n_tokens touches the GPU at all."""
        return self.n_gpu > 0 or (self.streams_host_layers and n_tokens >= STREAM_MIN_BATCH)

    def streamed_layers(self, n_tokens: int) -> list[int]:
        """Host layers that a batch of n_tokens streams to the GPU (in layer order)."""
        if self.streams_host_layers and n_tokens >= STREAM_MIN_BATCH:
            return self.host_layer_ids
        return []


def placement_for(n_layers: int, gpu_layers: int, stream: bool | None = None) -> Placement:
    """The placement of `--gpu-layers`: what the runtime builds (engine/offload_model.py) and what the
    memory planner plans (engine/memory.py), from this one function."""
    return Placement(int(n_layers), max(0, int(gpu_layers)), stream)


# ---- a layer's tensors packed into one contiguous byte range ------------------------------------------
@dataclass(frozen=True)
class Segment:
    """One tensor inside a packed layer: its raw blocks sit at [offset, offset + nbytes)."""
    name: str
    qtype: GGMLType
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass
class LayerPack:
    """Where each of a layer's tensors goes in a staging buffer / VRAM slot, and its host bytes."""
    layer: int
    segments: list[Segment]
    sources: list[np.ndarray]          # raw uint8 block bytes per segment (mmap views are fine)
    nbytes: int                        # packed size, alignment padding included

    @property
    def payload_bytes(self) -> int:
        return sum(s.nbytes for s in self.segments)


def packed_nbytes(sizes: Sequence[int], align: int = SLOT_ALIGN) -> int:
    """Bytes a layer whose tensors have `sizes` takes packed (what pack_layer allocates)."""
    return sum(-(-int(n) // align) * align for n in sizes)


def pack_layer(layer: int, tensors: Mapping[str, QTensor], align: int = SLOT_ALIGN) -> LayerPack:
    segments, sources, at = [], [], 0
    for name, t in tensors.items():
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        segments.append(Segment(name, GGMLType(t.qtype), tuple(t.shape), at, raw.nbytes))
        sources.append(raw)
        at += -(-raw.nbytes // align) * align
    return LayerPack(layer, segments, sources, at)


@dataclass
class SlotTensor(BlockShape):
    """A weight whose raw blocks live in a backend buffer (a VRAM slot or a resident layer buffer).
    Same fields as QTensor; `data` is a uint8 tensor/array view on the buffer."""
    name: str
    qtype: GGMLType
    shape: tuple[int, ...]
    data: Any


# ---- what the offload path allocates (the memory planner models it from these) ------------------------
CUDA_CONTEXT_BYTES = 512 << 20     # estimate: CUDA context + torch/cuBLAS handles and workspace


@dataclass
class VramPlan:
    """Device bytes by concern, plus the page-locked host memory the staging buffers take."""
    weights_per_layer: dict[int, int]      # resident layers, packed
    output: int                            # output head (+ output norm) when all layers are resident
    kv: int                                # KV of the resident layers
    staging_slots: int                     # 2 VRAM slots of the largest streamed layer
    scratch: int                           # transient: one dequantized weight + activations of a ubatch
    context: int = CUDA_CONTEXT_BYTES
    pinned_host: int = 0                   # 2 page-locked staging buffers (RAM, not VRAM)

    @property
    def weights(self) -> int:
        return sum(self.weights_per_layer.values()) + self.output

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.staging_slots + self.scratch + self.context

    def to_dict(self) -> dict:
        return {"weights": self.weights, "kv": self.kv, "staging": self.staging_slots, "compute": self.scratch,
                "overhead": self.context, "total": self.total, "pinned_host": self.pinned_host}


def plan_vram(layer_tensor_sizes: Sequence[Mapping[str, tuple[int, tuple[int, ...]]]],
              output_tensor_sizes: Mapping[str, tuple[int, tuple[int, ...]]], placement: Placement, *,
              kv_bytes_per_layer: Sequence[int], ubatch: int, activation_floats_per_token: int) -> VramPlan:
    """VRAM the offload path allocates. Each size map is name -> (nbytes, shape) of a tensor (from the
    tensor table: no data needed). activation_floats_per_token: the model's widest set of live f32
    activations per token (e.g. 2*n_embd + 3*n_ff for llama)."""
    if placement.n_gpu == 0 and not placement.streams_host_layers:
        return VramPlan({}, 0, 0, 0, 0, context=0)
    per_layer = {il: packed_nbytes([n for n, _ in layer_tensor_sizes[il].values()]) for il in placement.gpu_layer_ids}
    out = packed_nbytes([n for n, _ in output_tensor_sizes.values()]) if placement.output_on_gpu else 0
    kv = sum(kv_bytes_per_layer[il] for il in placement.gpu_layer_ids)
    streamed = placement.host_layer_ids if placement.streams_host_layers else []
    slot = max((packed_nbytes([n for n, _ in layer_tensor_sizes[il].values()]) for il in streamed), default=0)
    on_device = [layer_tensor_sizes[il] for il in set(placement.gpu_layer_ids) | set(streamed)]
    if placement.output_on_gpu:
        on_device.append(output_tensor_sizes)
    widest = max((prod(shape) for t in on_device for _, shape in t.values()), default=0)
    scratch = 4 * widest + 4 * ubatch * activation_floats_per_token
    return VramPlan(per_layer, out, kv, 2 * slot, scratch, pinned_host=2 * (-(-slot // mmap.PAGESIZE)) * mmap.PAGESIZE)


# ---- backends -----------------------------------------------------------------------------------------
class Backend(ABC):
    """What the streaming schedule needs from a device. Two streams: "copy" and "compute".
    Device-side operations are asynchronous; the host orders them only through events."""
    COPY, COMPUTE = "copy", "compute"

    @abstractmethod
    def alloc_staging(self, nbytes: int) -> Any:
        """Page-locked host memory of exactly nbytes (page-rounded, not power-of-two-rounded)."""

    @abstractmethod
    def alloc_device(self, nbytes: int) -> Any:
        """A device byte buffer."""

    @abstractmethod
    def fill(self, host: Any, offset: int, src: np.ndarray) -> None:
        """Host memcpy of src into the staging buffer at offset (runs now, on the host)."""

    @abstractmethod
    def copy_async(self, dst: Any, dst_offset: int, host: Any, offset: int, nbytes: int) -> None:
        """Enqueue an H2D copy of host[offset:offset+nbytes] on the copy stream."""

    @abstractmethod
    def record_event(self, stream: str) -> Any:
        """An event that completes when everything enqueued on `stream` so far has run."""

    @abstractmethod
    def wait_event(self, stream: str, event: Any) -> None:
        """Nothing enqueued on `stream` after this runs before `event` completes (device-side)."""

    @abstractmethod
    def host_wait(self, event: Any) -> None:
        """Block the host until `event` completes."""

    @abstractmethod
    def view(self, buf: Any, offset: int, nbytes: int) -> Any:
        """A uint8 view of a device buffer's byte range."""

    def launch(self, fn: Callable[[], Any]) -> Any:
        """Run compute work on the compute stream (CUDA: enqueue now; the simulation may defer it)."""
        return fn()

    def free_staging(self, host: Any) -> None:
        """Release page-locked memory (only after every copy from it has completed)."""

    def synchronize(self) -> None:
        """Wait for both streams to drain."""


class PinnedBuffer:
    """Exact-size page-locked host memory: anonymous mmap (page aligned) + cudaHostRegister.
    Unlike tensor.pin_memory(), whose allocator rounds sizes up to a power of two, this pins only
    ceil(nbytes / page) pages."""

    def __init__(self, nbytes: int):
        import torch
        self.nbytes = nbytes
        self._mm = mmap.mmap(-1, max(nbytes, 1))
        self.array = np.frombuffer(self._mm, dtype=np.uint8, count=nbytes)
        self.array[::mmap.PAGESIZE] = 0                 # touch every page now, not during the first copy
        self.tensor = torch.from_numpy(self.array)
        self.ptr = self.array.ctypes.data
        self.registered = False
        rc = torch.cuda.cudart().cudaHostRegister(self.ptr, max(nbytes, 1), 0)
        _check_cuda(rc, f"cudaHostRegister of {nbytes} bytes")
        self.registered = True

    def close(self) -> None:
        import torch
        if self.registered:
            _check_cuda(torch.cuda.cudart().cudaHostUnregister(self.ptr), "cudaHostUnregister")
            self.registered = False
        self.tensor = self.array = None
        try:
            self._mm.close()
        except BufferError:                             # a view is still alive; the GC frees it later
            pass


def _check_cuda(rc: Any, what: str) -> None:
    code = int(getattr(rc, "value", rc))
    if code != 0:
        import torch
        msg = torch.cuda.cudart().cudaGetErrorString(rc) if hasattr(torch.cuda.cudart(), "cudaGetErrorString") else ""
        raise RuntimeError(f"{what} failed: CUDA error {code} {msg}".strip())


class TorchBackend(Backend):
    """torch tensors on `device`. On CUDA: page-locked staging, a dedicated copy stream, the stream
    current at each call as compute stream, real events. On the CPU the same code runs with synchronous copies and
    no events (everything is already ordered), which lets the runtime's offload path run in CPU tests."""

    def __init__(self, device: Any = None):
        import torch
        self.torch = torch
        self.device = torch.device(device if device is not None else "cuda")
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            self.copy_stream = torch.cuda.Stream(self.device)

    def _stream(self, name: str):
        """The copy stream, or whatever stream the compute is being enqueued on right now."""
        return self.copy_stream if name == self.COPY else self.torch.cuda.current_stream(self.device)

    def alloc_staging(self, nbytes: int) -> Any:
        if self.cuda:
            return PinnedBuffer(nbytes)
        return _HostBuffer(nbytes)

    def free_staging(self, host: Any) -> None:
        host.close()

    def alloc_device(self, nbytes: int):
        return self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)

    def fill(self, host: Any, offset: int, src: np.ndarray) -> None:
        from engine.quant import as_uint8_tensor
        host.tensor[offset:offset + src.nbytes].copy_(as_uint8_tensor(src))   # multi-threaded memcpy

    def copy_async(self, dst, dst_offset: int, host: Any, offset: int, nbytes: int) -> None:
        src = host.tensor[offset:offset + nbytes]
        if not self.cuda:
            dst[dst_offset:dst_offset + nbytes].copy_(src)
            return
        with self.torch.cuda.stream(self.copy_stream):
            dst[dst_offset:dst_offset + nbytes].copy_(src, non_blocking=True)

    def record_event(self, stream: str):
        if not self.cuda:
            return None
        ev = self.torch.cuda.Event()
        ev.record(self._stream(stream))
        return ev

    def wait_event(self, stream: str, event) -> None:
        if event is not None:
            self._stream(stream).wait_event(event)

    def host_wait(self, event) -> None:
        if event is not None:
            event.synchronize()

    def view(self, buf, offset: int, nbytes: int):
        return buf[offset:offset + nbytes]

    def synchronize(self) -> None:
        if self.cuda:
            self.copy_stream.synchronize()
            self.torch.cuda.current_stream(self.device).synchronize()



class _HostBuffer:
    """Plain host memory standing in for a staging buffer where nothing needs pinning (CPU device)."""

    def __init__(self, nbytes: int):
        import torch
        self.nbytes = nbytes
        self.tensor = torch.empty(nbytes, dtype=torch.uint8)

    def close(self) -> None:
        self.tensor = None


# ---- the double-buffered stream of host layers ------------------------------------------------------
@dataclass
class _Slot:
    host: Any
    dev: Any
    layer: int | None = None
    copied: Any = None        # event: the H2D copy of `layer` into dev has completed (host buffer free)
    consumed: Any = None      # event: the compute that read dev has completed (dev free)


@dataclass
class StreamStats:
    layers: int = 0
    bytes: int = 0
    copies: int = 0
    host_waits: int = 0
    order: list[tuple[str, int]] = field(default_factory=list)   # ("copy"|"compute", layer), issue order


class LayerStreamer:
    """Streams packed host layers through two staging buffers and two VRAM slots.

        with streamer.begin([0, 1, 2]):        # the host layers this batch streams, in compute order
            for il in range(n_layers):
                w = resident[il] if on_gpu(il) else streamer.acquire(il)
                ...compute layer il on the compute stream...
                if not on_gpu(il): streamer.release(il)

    Rules (tested on the CPU simulation):
    - the copy of streamed layer k+1 is issued before layer k's compute is (acquire(k) issues it);
    - host staging buffer k%2 is refilled only after the H2D copy that read it (layer k-2) completed;
    - VRAM slot k%2 is overwritten only after the compute that read it (layer k-2) completed;
    - layer k's compute starts only after its copy completed.
    """

    def __init__(self, backend: Backend, packs: Mapping[int, LayerPack], chunk_bytes: int = CHUNK_BYTES):
        if not packs:
            raise ValueError("nothing to stream")
        self.backend, self.packs, self.chunk_bytes = backend, dict(packs), max(1, chunk_bytes)
        self.slot_bytes = max(p.nbytes for p in self.packs.values())
        self.slots = [_Slot(backend.alloc_staging(self.slot_bytes), backend.alloc_device(self.slot_bytes))
                      for _ in range(2)]
        self.stats = StreamStats()
        self._order: list[int] = []
        self._k = 0                 # index in _order of the next layer acquire() expects
        self._issued = 0            # how many layers of _order have had their copy issued

    # -- one batch ----------------------------------------------------------------------------------
    def begin(self, layers: Sequence[int]) -> "LayerStreamer":
        unknown = [il for il in layers if il not in self.packs]
        if unknown:
            raise ValueError(f"layers {unknown} were not packed for streaming")
        self._order, self._k, self._issued = list(layers), 0, 0
        if self._order:
            self._issue(0)          # the first copy overlaps whatever the GPU does before layer k=0
        return self

    def __enter__(self) -> "LayerStreamer":
        return self

    def __exit__(self, *exc) -> None:
        self._order, self._k, self._issued = [], 0, 0

    def acquire(self, layer: int) -> dict[str, SlotTensor]:
        """Layer `layer`'s weights in VRAM, safe to use on the compute stream from now on."""
        k = self._k
        if k >= len(self._order) or self._order[k] != layer:
            raise RuntimeError(f"streamed layer {layer} acquired out of order (expected "
                               f"{self._order[k] if k < len(self._order) else 'none'})")
        if k + 1 < len(self._order):
            self._issue(k + 1)      # next copy first: it runs on the copy stream while layer k computes
        slot = self.slots[k % 2]
        self.backend.wait_event(Backend.COMPUTE, slot.copied)
        self.stats.order.append(("compute", layer))
        pack = self.packs[layer]
        return {s.name: SlotTensor(s.name, s.qtype, s.shape, self.backend.view(slot.dev, s.offset, s.nbytes))
                for s in pack.segments}

    def release(self, layer: int) -> None:
        """The compute that reads `layer`'s slot has been enqueued; the slot may be refilled after it."""
        k = self._k
        if self._order[k] != layer:
            raise RuntimeError(f"streamed layer {layer} released out of order")
        self.slots[k % 2].consumed = self.backend.record_event(Backend.COMPUTE)
        self._k += 1

    # -- copies ---------------------------------------------------------------------------------------
    def _issue(self, k: int) -> None:
        if k < self._issued:
            return
        b, slot, pack = self.backend, self.slots[k % 2], self.packs[self._order[k]]
        if slot.copied is not None:                 # host buffer: the DMA of layer k-2 must be done
            b.host_wait(slot.copied)
            self.stats.host_waits += 1
        if slot.consumed is not None:               # VRAM slot: the compute of layer k-2 must be done
            b.wait_event(Backend.COPY, slot.consumed)
        lo_pending = end = 0                        # gaps between segments are padding: copied along
        for seg, src in zip(pack.segments, pack.sources):
            for lo in range(0, seg.nbytes, self.chunk_bytes):
                hi = min(seg.nbytes, lo + self.chunk_bytes)
                b.fill(slot.host, seg.offset + lo, src[lo:hi])
                end = seg.offset + hi
                if end - lo_pending >= self.chunk_bytes:
                    lo_pending = self._flush(slot, lo_pending, end)
        self._flush(slot, lo_pending, end)
        slot.copied = b.record_event(Backend.COPY)
        slot.layer = pack.layer
        self._issued = k + 1
        self.stats.layers += 1
        self.stats.bytes += pack.payload_bytes
        self.stats.order.append(("copy", pack.layer))

    def _flush(self, slot: _Slot, lo: int, hi: int) -> int:
        if hi > lo:
            self.backend.copy_async(slot.dev, lo, slot.host, lo, hi - lo)
            self.stats.copies += 1
        return hi

    def close(self) -> None:
        self.backend.synchronize()
        for s in self.slots:
            self.backend.free_staging(s.host)
        self.slots = []
