"""The runtime hook: a small residual stack run through Offload gives the CPU result on every placement."""
from __future__ import annotations

import numpy as np
import pytest

from engine.offload import STREAM_MIN_BATCH, Placement, SlotTensor
from engine.quant import GGMLType, QTensor

torch = pytest.importorskip("torch")
from engine.gpu_kernels import linear  # noqa: E402
from engine.offload_runtime import Offload  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA GPU"))]
N_LAYERS, D, F = 4, 64, 96


def _model(seed=0):
    from tests.ggufgen import raw_tensor
    rng = np.random.default_rng(seed)

    def q(name, shape, qtype=GGMLType.Q8_0):
        rt = raw_tensor(qtype, shape, rng)
        return QTensor(name, qtype, rt.shape, rt.data)
    layers = [{f"blk.{i}.up": q(f"blk.{i}.up", (F, D)), f"blk.{i}.down": q(f"blk.{i}.down", (D, F), GGMLType.Q4_1)}
              for i in range(N_LAYERS)]
    return layers, {"output": q("output", (32, D))}


def _block(x, w, il):
    h = linear(x, w[f"blk.{il}.up"])
    return x + linear(torch.nn.functional.silu(h), w[f"blk.{il}.down"])


def _forward_cpu(layers, output, x):
    for il, w in enumerate(layers):
        x = _block(x, w, il)
    return linear(x, output["output"])


def _forward(off, x):
    with off.step(x.shape[0]) as st:
        for il in range(N_LAYERS):
            x = x.to(st.device_of(il))
            x = _block(x, st.weights(il), il)
            st.done(il)
        x = x.to(st.output_device)
        return linear(x, st.output_weights["output"]).cpu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gpu_layers,stream", [(4, None), (2, None), (0, True), (1, False)])
@pytest.mark.parametrize("n_tokens", [1, STREAM_MIN_BATCH + 5])
def test_every_placement_gives_the_cpu_result(device, gpu_layers, stream, n_tokens):
    layers, output = _model()
    x = torch.randn(n_tokens, D, generator=torch.Generator().manual_seed(n_tokens))
    ref = _forward_cpu(layers, output, x)
    off = Offload(layers, output, Placement(N_LAYERS, gpu_layers, stream), device=device, chunk_bytes=1000)
    for _ in range(2):                                   # slots and events are reused across steps
        out = _forward(off, x)
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
    off.close()


def test_a_step_names_the_device_and_weights_of_each_layer():
    layers, output = _model()
    off = Offload(layers, output, Placement(N_LAYERS, 1), device="cpu")
    with off.step(STREAM_MIN_BATCH) as st:                # prefill: host layers 0..2 streamed
        assert sorted(st.streamed) == [0, 1, 2]
        w0 = st.weights(0)
        assert all(isinstance(t, SlotTensor) for t in w0.values())
        st.done(0)
    with off.step(1) as st:                               # decode: host layers stay host weights
        assert st.streamed == set()
        assert all(isinstance(t, QTensor) for t in st.weights(0).values())
        assert all(isinstance(t, SlotTensor) for t in st.weights(3).values())
    assert off.output_device == torch.device("cpu")       # not every layer resident: head on the host
    assert off.resident_bytes == off.resident[3].nbytes
    off.close()


def test_write_back_lands_when_the_step_ends():
    layers, output = _model()
    off = Offload(layers, output, Placement(N_LAYERS, 2), device="cpu")
    host = torch.zeros(3, 4)
    assert off.kv_device(0) == torch.device("cpu") and off.kv_device(3) == off.device
    with off.step(1) as st:
        st.write_back(host[1], torch.ones(4))            # same device: copied at once
        assert host[1].sum() == 4
    off.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_write_back_from_the_gpu_is_deferred_to_the_end_of_the_step():
    layers, output = _model()
    off = Offload(layers, output, Placement(N_LAYERS, 2), device="cuda")
    host = torch.zeros(3, 4)
    with off.step(STREAM_MIN_BATCH) as st:
        st.write_back(host[2], torch.full((4,), 2.0, device="cuda"))
        assert host.sum() == 0
    assert host[2].tolist() == [2.0] * 4
    off.close()


def test_a_placement_for_another_layer_count_is_refused():
    layers, output = _model()
    with pytest.raises(ValueError, match="layers"):
        Offload(layers, output, Placement(N_LAYERS + 1, 1), device="cpu")
