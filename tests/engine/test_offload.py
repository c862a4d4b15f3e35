"""Offload: placement, layer packing, and the double-buffered streaming schedule (CPU simulation),
plus the real pinned/CUDA path when a GPU is present."""
from __future__ import annotations

import numpy as np
import pytest

from engine.offload import (STREAM_MIN_BATCH, Backend, LayerStreamer, Placement, pack_layer)
from engine.offload_sim import SimBackend, SimDeadlock
from engine.quant import GGMLType, QTensor

torch = pytest.importorskip("torch")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _layer_tensors(il: int, rng: np.random.Generator, sizes=(1000, 37, 5000, 1)) -> dict[str, QTensor]:
    out = {}
    for j, n in enumerate(sizes):
        n = n + il * 3                         # layers of different sizes
        out[f"blk.{il}.t{j}"] = QTensor(f"blk.{il}.t{j}", GGMLType.F32, (n,),
                                        rng.integers(0, 256, 4 * n, dtype=np.uint8))
    return out


def _packs(n_layers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {il: pack_layer(il, _layer_tensors(il, rng)) for il in range(n_layers)}


def _run_batch(streamer: LayerStreamer, backend: Backend, layers, packs, seen: list, n_layers=None):
    """A forward pass: every streamed layer's compute checks, when it RUNS, that its slot holds
    exactly that layer's bytes."""
    streamer.begin(layers)
    for il in layers:
        w = streamer.acquire(il)
        expected = {s.name: src for s, src in zip(packs[il].segments, packs[il].sources)}

        def compute(il=il, w=w, expected=expected):
            for name, t in w.items():
                assert np.array_equal(np.asarray(t.data), expected[name]), f"layer {il}: {name} corrupted"
            seen.append(il)
        backend.launch(compute)
        streamer.release(il)


# ---- placement ----------------------------------------------------------------------------------------
def test_placement_puts_the_last_layers_on_the_gpu():
    p = Placement(n_layers=8, gpu_layers=3)
    assert p.gpu_layer_ids == [5, 6, 7] and p.host_layer_ids == [0, 1, 2, 3, 4]
    assert [p.on_gpu(i) for i in (4, 5)] == [False, True]
    assert not p.output_on_gpu
    assert Placement(8, 8).output_on_gpu and Placement(8, 99).n_gpu == 8


def test_placement_streams_host_layers_only_for_big_batches():
    p = Placement(n_layers=4, gpu_layers=2)
    assert p.streamed_layers(STREAM_MIN_BATCH) == [0, 1]
    assert p.streamed_layers(STREAM_MIN_BATCH - 1) == []
    assert Placement(4, 0).streamed_layers(512) == []            # no GPU asked for: pure CPU
    assert not Placement(4, 0).uses_gpu(512)
    assert Placement(4, 0, stream=True).streamed_layers(512) == [0, 1, 2, 3]
    assert Placement(4, 2, stream=False).streamed_layers(512) == []
    assert Placement(4, 4).streamed_layers(512) == []           # nothing left on the host


# ---- packing ------------------------------------------------------------------------------------------
def test_pack_layer_aligns_every_tensor_and_keeps_sizes():
    packs = _packs(1)
    p = packs[0]
    assert all(s.offset % 256 == 0 for s in p.segments)
    assert [s.nbytes for s in p.segments] == [src.nbytes for src in p.sources]
    ends = [s.offset + s.nbytes for s in p.segments]
    assert all(e <= nxt.offset for e, nxt in zip(ends, p.segments[1:]))
    assert p.nbytes >= ends[-1] and p.nbytes % 256 == 0


# ---- the schedule, on the simulation ---------------------------------------------------------------------
@pytest.mark.parametrize("policy,seed", [("eager-copy", 0), ("eager-compute", 0), ("lazy", 0)] + [("random", s) for s in range(12)])
def test_every_compute_sees_its_own_layer(policy, seed):
    packs = _packs(7)
    b = SimBackend(policy, seed)
    s = LayerStreamer(b, packs, chunk_bytes=3000)          # several chunks per layer
    seen: list[int] = []
    for batch in ([0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6], [2, 5]):   # slots and events reused across batches
        _run_batch(s, b, batch, packs, seen)
    s.close()
    assert seen == [0, 1, 2, 3, 4, 5, 6] * 2 + [2, 5]
    assert len(b.freed) == 2


def test_copy_of_next_layer_is_issued_before_this_layers_compute():
    packs = _packs(5)
    b = SimBackend("eager-copy")
    s = LayerStreamer(b, packs)
    _run_batch(s, b, list(range(5)), packs, [])
    order = s.stats.order
    for k in range(4):
        assert order.index(("copy", k + 1)) < order.index(("compute", k))
    assert order[0] == ("copy", 0)


def test_only_two_staging_buffers_and_two_slots_of_the_largest_layer():
    packs = _packs(6)
    b = SimBackend()
    s = LayerStreamer(b, packs)
    assert [buf.kind for buf in b.buffers] == ["host", "dev", "host", "dev"]
    assert all(buf.array.nbytes == max(p.nbytes for p in packs.values()) for buf in b.buffers)
    _run_batch(s, b, list(range(6)), packs, [])
    copies = [op for op in b.issued if op[0] == "copy"]
    used_hosts = {op[4] for op in copies}
    assert used_hosts == {b.buffers[0].id, b.buffers[2].id}
    # layer k goes through staging buffer k % 2
    per_layer_host = [op[4] for op in copies]
    assert per_layer_host[0] == b.buffers[0].id and per_layer_host[-1] == b.buffers[2].id


def test_copies_are_coalesced_into_chunk_sized_transfers():
    packs = _packs(2)
    b = SimBackend()
    s = LayerStreamer(b, packs, chunk_bytes=1 << 20)
    _run_batch(s, b, [0, 1], packs, [])
    assert s.stats.copies == 2                            # one transfer per small layer
    assert s.stats.bytes == sum(p.payload_bytes for p in packs.values())


def test_slot_reuse_waits_for_the_compute_that_read_it():
    """In issue order: the copy-stream wait that precedes the copy of layer k+2 names the event
    recorded on the compute stream right after layer k's compute was launched."""
    packs = _packs(4)
    b = SimBackend("lazy")
    s = LayerStreamer(b, packs)
    _run_batch(s, b, [0, 1, 2, 3], packs, [])
    ops = b.issued
    launches = [i for i, op in enumerate(ops) if op[0] == "fn"]
    compute_records = [ops[i + 1][2] for i in launches]     # release() right after each launch
    assert all(ops[i + 1][:2] == ("record", "compute") for i in launches)
    copy_waits = [op[2] for op in ops if op[:2] == ("wait", "copy")]
    assert copy_waits == compute_records[:2]                # layers 2, 3 wait for computes 0, 1
    host_waits = [op for op in ops if op[0] == "host_wait"]
    assert len(host_waits) == 2                             # staging buffers refilled twice


class _NoSlotWait(LayerStreamer):
    def _issue(self, k):
        self.slots[k % 2].consumed = None                    # forget the compute -> copy dependency
        super()._issue(k)


class _NoHostWait(LayerStreamer):
    def _issue(self, k):
        self.slots[k % 2].copied = None if k >= 2 else self.slots[k % 2].copied
        super()._issue(k)


class _ComputeDoesNotWaitForCopy(LayerStreamer):
    def acquire(self, layer):
        w = super().acquire(layer)
        self.backend.queues[Backend.COMPUTE].pop()          # drop the compute stream's wait on the copy
        return w


@pytest.mark.parametrize("broken,policy", [(_NoSlotWait, "eager-copy"), (_NoHostWait, "lazy"),
                                           (_ComputeDoesNotWaitForCopy, "eager-compute")])
def test_the_simulation_catches_a_missing_dependency(broken, policy):
    packs = _packs(5)
    b = SimBackend(policy)
    s = broken(b, packs)
    with pytest.raises(AssertionError, match="corrupted"):
        _run_batch(s, b, list(range(5)), packs, [])
        b.synchronize()


def test_acquire_out_of_order_is_refused():
    packs = _packs(3)
    s = LayerStreamer(SimBackend(), packs)
    s.begin([0, 1, 2])
    with pytest.raises(RuntimeError, match="out of order"):
        s.acquire(1)
    with pytest.raises(ValueError, match="not packed"):
        s.begin([7])


def test_simulation_reports_a_wait_that_can_never_finish():
    b = SimBackend("lazy")
    never = b.record_event(Backend.COMPUTE)
    b.queues[Backend.COMPUTE].clear()                        # the record never runs
    with pytest.raises(SimDeadlock):
        b.host_wait(never)


# ---- the real thing -------------------------------------------------------------------------------------
@needs_cuda
def test_pinned_buffer_is_exact_size_and_registered():
    from engine.offload import PinnedBuffer
    buf = PinnedBuffer(3 * 4096 + 17)
    try:
        assert buf.array.nbytes == 3 * 4096 + 17 and buf.tensor.is_pinned()
    finally:
        buf.close()


DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@pytest.mark.parametrize("device", DEVICES)
def test_torch_streamer_delivers_every_layer(device):
    from engine.offload import TorchBackend
    packs = _packs(6)
    b = TorchBackend(device)
    s = LayerStreamer(b, packs, chunk_bytes=4096)
    sums = []
    for _ in range(2):
        s.begin(list(range(6)))
        for il in range(6):
            w = s.acquire(il)
            sums.append([int(t.data.to(torch.int64).sum()) for t in w.values()])
            s.release(il)
    s.close()
    expected = [[int(src.astype(np.int64).sum()) for src in packs[il].sources] for il in range(6)] * 2
    assert sums == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K,
                                   GGMLType.F32])
def test_resident_linear_matches_the_reference_product(qtype, device):
    from engine.gpu_kernels import ResidentLayer, linear
    from tests.ggufgen import raw_tensor
    rng = np.random.default_rng(int(qtype))
    rt = raw_tensor(qtype, (96, 512), rng)
    w = QTensor("w", qtype, rt.shape, rt.data)
    x = torch.randn(7, 512, generator=torch.Generator().manual_seed(1))
    ref = x.double() @ w.dequantize().double().t()
    layer = ResidentLayer.upload(0, {"w": w}, torch.device(device))
    out = linear(x.to(device), layer.tensors["w"]).cpu().double()
    assert torch.linalg.norm(out - ref) / torch.linalg.norm(ref) < 1e-5


def test_vram_plan_matches_what_is_allocated():
    from engine.gpu_kernels import ResidentLayer
    from engine.offload import TorchBackend, plan_vram
    rng = np.random.default_rng(3)
    layers = [_layer_tensors(il, rng) for il in range(6)]
    sizes = [{n: (t.nbytes, t.shape) for n, t in layer.items()} for layer in layers]
    placement = Placement(6, 2)
    plan = plan_vram(sizes, {}, placement, kv_bytes_per_layer=[1000] * 6, ubatch=8, activation_floats_per_token=10)
    resident = [ResidentLayer.upload(il, layers[il], torch.device("cpu")) for il in placement.gpu_layer_ids]
    streamer = LayerStreamer(TorchBackend("cpu"), {il: pack_layer(il, layers[il]) for il in placement.host_layer_ids})
    assert plan.weights == sum(r.nbytes for r in resident)
    assert plan.staging_slots == 2 * streamer.slot_bytes
    assert plan.pinned_host >= 2 * streamer.slot_bytes and plan.kv == 2000
    assert plan.scratch == 4 * (5000 + 5 * 3) + 4 * 8 * 10     # widest weight (layer 5's t2) + activations
    assert plan.total == plan.weights + plan.kv + plan.staging_slots + plan.scratch + plan.context
    assert plan_vram(sizes, {}, Placement(6, 0), kv_bytes_per_layer=[1] * 6, ubatch=8,
                     activation_floats_per_token=10).total == 0
