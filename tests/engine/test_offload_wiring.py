"""Offload wired into the runtime (LoadOptions.gpu_layers): with the CPU standing in for the device
(offload_device="cpu"), every placement gives the plain CPU run of the same torch path token for token
(CELLAR_NATIVE_DECODE=0: an offloaded step never takes the fused native decode layer, whose rounding is
llama.cpp's and not torch's; nor the prefill's native small steps, whose SiLU is ggml's exp: the CPU
reference runs them in torch too, as a CPU without the library would); the memory planner's
VRAM figures are what the runtime allocates; without CUDA, --gpu-layers warns and runs on the CPU."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from engine import gpu_kernels, kernels, ops  # noqa: E402
from engine.offload import STREAM_MIN_BATCH, SlotTensor  # noqa: E402
from engine.runtime import LoadOptions, Model  # noqa: E402
from engine.sampling import Sampler, SamplingParams  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg, a goldsmith "
          "from Mainz, combined several existing technologies into a machine that could print pages faster than "
          "any scribe. Before him, books were copied by hand")
N_GEN = 32
SMOL_LAYERS = 30


def _load(path, **kw) -> Model:
    return Model.load(path, LoadOptions(ctx=256, ubatch=64, warmup=False, threads=2, **kw))


def _prompt(model: Model) -> list[int]:
    ids = model.tokenizer.encode(PROMPT, add_special=True)
    assert len(ids) >= STREAM_MIN_BATCH          # the prefill is big enough to stream host layers
    return ids


def _greedy(model: Model, n: int = N_GEN) -> list[int]:
    return model.generate(_prompt(model), n, Sampler(SamplingParams(temperature=0, seed=0))).tokens


def _torch_path(mp: pytest.MonkeyPatch) -> None:
    """The CPU reference on the torch path the offloaded layers take (see the module's doc)."""
    mp.setenv("CELLAR_NATIVE_DECODE", "0")
    mp.setattr(kernels, "has_prefill_ops", lambda: False)
    mp.setattr(ops, "PREFILL", "f32")        # the device's dequantize + matmul, not the CPU's int8 GEMM


@pytest.fixture(scope="module")
def smol_cpu(smollm2_path):
    with pytest.MonkeyPatch.context() as mp:
        _torch_path(mp)
        m = _load(smollm2_path)
        toks = _greedy(m)
        logits = m.eval(_prompt(m), pos0=0)
    m.close()
    assert len(toks) == N_GEN
    return toks, logits


# ---- greedy equality on every placement ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("gpu_layers,stream", [(0, True), (12, None), (12, False), (SMOL_LAYERS, None)],
                         ids=["all-streamed", "12-resident-rest-streamed", "12-resident-rest-on-cpu", "all-resident"])
def test_greedy_output_with_offload_equals_the_cpu_run(smollm2_path, smol_cpu, gpu_layers, stream, monkeypatch):
    _torch_path(monkeypatch)
    m = _load(smollm2_path, offload_device="cpu", gpu_layers=gpu_layers, offload_stream=stream)
    off = m.offload
    assert off is not None and m.warnings == []
    assert sorted(off.resident) == list(range(SMOL_LAYERS - gpu_layers, SMOL_LAYERS))
    assert (off._output_layer is not None) == (gpu_layers == SMOL_LAYERS)
    assert _greedy(m) == smol_cpu[0]
    n_host = SMOL_LAYERS - gpu_layers
    if off.streamer is not None:                  # the prefill streamed every host layer through the slots
        assert off.streamer.stats.layers >= n_host and off.streamer.stats.bytes > 0
    else:
        assert stream is False or n_host == 0
    m.close()


@pytest.mark.slow
def test_gemma3_greedy_output_with_offload_equals_the_cpu_run(gemma3_path, monkeypatch):
    """Sliding-window and global caches split between host and device, q8_0 KV cells stored on both sides,
    Q/K norms read as views of the device buffers, the tied output head on the host."""
    _torch_path(monkeypatch)
    m = _load(gemma3_path, kv_type="q8_0")
    ref = _greedy(m)
    m.close()
    m = _load(gemma3_path, offload_device="cpu", gpu_layers=7, kv_type="q8_0")
    assert sorted(m.offload.resident) == list(range(11, 18)) and m.offload.streamer is not None
    assert _greedy(m) == ref
    assert m.offload.streamer.stats.layers >= 11
    m.close()


@pytest.mark.slow
def test_the_device_buffers_are_what_runs(smollm2_path, smol_cpu):
    """Bit-identical logits with every layer resident; changing bytes in a resident buffer changes them
    (so the packed copies, not the file's mapping, are what the layers multiply)."""
    m = _load(smollm2_path, offload_device="cpu", gpu_layers=SMOL_LAYERS)
    ids = _prompt(m)
    assert torch.equal(m.eval(ids, pos0=0), smol_cpu[1])
    w = m.offload.resident[SMOL_LAYERS - 1].tensors["ffn_down"]
    assert isinstance(w, SlotTensor)
    w.data.zero_()
    assert not torch.allclose(m.eval(ids, pos0=0), smol_cpu[1], atol=1e-3)
    m.close()


def test_streamed_layers_send_their_new_kv_cells_home(smollm2_path):
    m = _load(smollm2_path, offload_device="cpu", gpu_layers=4)
    ids = _prompt(m)
    m.eval(ids)
    cache = m.kv.cache_of(0)
    assert 0 in m.offload.streamer.packs
    used = cache.k[0][:len(ids)].float()
    assert used.abs().sum(1).min() > 0 and cache.k[0][len(ids):].abs().sum() == 0
    m.close()


def test_no_gpu_layers_means_no_offload(smollm2_path):
    m = _load(smollm2_path, offload_device="cpu", gpu_layers=0)
    assert m.offload is None and m.warnings == [] and m.net.offload is None
    m.close()


# ---- the device kernels (torch) in the whole model -------------------------------------------------------
@pytest.mark.slow
def test_torch_device_kernels_end_to_end(smollm2_path, monkeypatch):
    """The kernels a CUDA device runs (torch: dequantize + f32 matmul, q8 activations for decode), here
    on the CPU: the prefill's logits track the CPU's f32 path to f32 rounding, and greedy decoding starts
    the same. (The CPU reference dequantizes into an f32 scratch as the device does: on a CPU with a bf16
    matmul unit its default scratch is bf16; and it runs the layer's small steps in torch as the device
    does: the native ones' SiLU is ggml's exp, a few ulps from torch's, 1e-3 of the logits after 30
    layers.)"""
    monkeypatch.setattr(ops, "SCRATCH_DTYPE", torch.float32)
    monkeypatch.setattr(ops, "PREFILL", "f32")     # dequantize + matmul, not the CPU's int8 GEMM
    monkeypatch.setattr(kernels, "has_prefill_ops", lambda: False)
    monkeypatch.setenv("CELLAR_NATIVE_DECODE", "0")
    cpu = _load(smollm2_path)
    ref = cpu.eval(_prompt(cpu), pos0=0)
    ref_tokens = _greedy(cpu, 8)
    cpu.close()
    monkeypatch.setattr(gpu_kernels, "TORCH_ON_CPU", True)
    m = _load(smollm2_path, offload_device="cpu", gpu_layers=SMOL_LAYERS)
    logits = m.eval(_prompt(m), pos0=0)
    assert (logits - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    assert _greedy(m, 8) == ref_tokens
    m.close()


# ---- the memory planner plans what the runtime allocates -------------------------------------------------
@pytest.mark.parametrize("gpu_layers", [5, SMOL_LAYERS])
def test_planner_vram_is_what_the_runtime_allocates(smollm2_path, gpu_layers):
    from engine import memory
    from engine.gguf import GGUFFile
    m = _load(smollm2_path, offload_device="cpu", gpu_layers=gpu_layers)
    g = GGUFFile.open(smollm2_path, read_data=False)
    plan = memory.plan(g, memory.Settings(ctx=256, ubatch=64, gpu_layers=gpu_layers), free_ram=1 << 40,
                       free_vram=1 << 40)
    g.close()
    off = m.offload
    assert [r.place == "vram" for r in plan.layers] == [off.placement.on_gpu(il) for il in range(SMOL_LAYERS)]
    assert plan.vram.sum("weights") == off.resident_bytes
    device_kv = sum(c.k[il].nbytes + c.v[il].nbytes for c in m.kv.caches for il in c.layers if il in off.resident)
    assert plan.vram.sum("kv") == device_kv
    staging = sum(i.nbytes for i in plan.vram.items if i.what.startswith("streaming slots"))
    assert staging == off.staging_bytes
    assert (staging > 0) == (gpu_layers < SMOL_LAYERS)
    m.close()


# ---- no CUDA: warn and run on the CPU, as llama.cpp does -------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_layers_without_cuda_warns_and_runs_on_the_cpu(smollm2_path):
    m = _load(smollm2_path, gpu_layers=12)
    assert m.offload is None and len(m.warnings) == 1 and "--gpu-layers 12 is ignored" in m.warnings[0]
    m.close()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("command", ["run", "bench"])
def test_cli_gpu_layers_without_cuda(smollm2_path, command, capsys):
    from engine.cli import main
    args = (["run", str(smollm2_path), "-p", "Hello", "-n", "4", "--temp", "0", "--ctx", "256"] if command == "run"
            else ["bench", str(smollm2_path), "--pp", "8", "--tg", "2", "--ctx", "256"])
    assert main(args + ["--gpu-layers", "8", "--json"]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no usable GPU" in warnings[0]
    result = json.loads(out)
    assert (len(result["tokens"]) == 4) if command == "run" else (result["gpu_layers"] == 0 and result["tg"] == 2)


# ---- what only a GPU can show -----------------------------------------------------------------------------
@needs_cuda
@pytest.mark.slow
def test_cuda_greedy_output_equals_the_cpu_run(smollm2_path, smol_cpu):
    m = _load(smollm2_path, gpu_layers=SMOL_LAYERS)
    assert m.offload.device.type == "cuda"
    assert all(t.data.is_cuda for t in m.offload.resident[0].tensors.values())
    assert all(c.k[il].is_cuda for c in m.kv.caches for il in c.layers)
    assert _greedy(m) == smol_cpu[0]
    m.close()


@needs_cuda
def test_cuda_staging_buffers_are_pinned_and_the_copy_overlaps_compute(smollm2_path):
    """Real page-locked staging (cudaHostRegister), and the next layer's H2D runs while this layer
    computes: measured with CUDA events, the streamed prefill takes less than copy + compute in series."""
    from engine.offload import PinnedBuffer
    m = _load(smollm2_path, gpu_layers=6)
    st = m.offload.streamer
    assert all(isinstance(s.host, PinnedBuffer) and s.host.registered for s in st.slots)
    ids = _prompt(m)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    m.eval(ids, pos0=0)
    start.record()
    m.eval(ids, pos0=0)
    end.record()
    torch.cuda.synchronize()
    streamed_ms = start.elapsed_time(end)
    nbytes = sum(p.nbytes for p in st.packs.values())
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    start.record()
    dst.copy_(src, non_blocking=True)
    end.record()
    torch.cuda.synchronize()
    copy_ms = start.elapsed_time(end)
    m2 = _load(smollm2_path, gpu_layers=SMOL_LAYERS)
    m2.eval(ids, pos0=0)
    start.record()
    m2.eval(ids, pos0=0)
    end.record()
    torch.cuda.synchronize()
    resident_ms = start.elapsed_time(end)
    assert streamed_ms < copy_ms + resident_ms
    m.close()
    m2.close()


@needs_cuda
def test_cuda_vram_within_5_percent_of_nvml(smollm2_path):
    pynvml = pytest.importorskip("pynvml")
    from engine import memory
    from engine.gguf import GGUFFile
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    before = pynvml.nvmlDeviceGetMemoryInfo(h).used
    m = Model.load(smollm2_path, LoadOptions(ctx=2048, gpu_layers=SMOL_LAYERS))   # warmup: one full ubatch
    used = pynvml.nvmlDeviceGetMemoryInfo(h).used - before
    g = GGUFFile.open(smollm2_path, read_data=False)
    plan = memory.plan(g, memory.Settings(ctx=2048, gpu_layers=SMOL_LAYERS))
    g.close()
    assert abs(plan.vram.total - used) <= 0.05 * used, (plan.vram.total, used)
    m.close()


def test_a_session_saved_with_offload_restores_the_same_state(smollm2_path, tmp_path):
    """Session save/restore reads and writes K/V rows where they live (resident layers on the device)."""
    from engine import session
    m = _load(smollm2_path, offload_device="cpu", gpu_layers=12)
    ids = _prompt(m)
    m.eval(ids)
    session.save(m, tmp_path / "s.cellar", tokens=ids)
    ref = m.eval([42])
    m.reset()
    info = session.load(m, tmp_path / "s.cellar")
    assert list(info.tokens) == ids and m.cached_tokens() == ids
    assert torch.equal(m.eval([42]), ref)
    m.close()


@pytest.mark.parametrize("gpu_layers", [12, SMOL_LAYERS])
def test_batched_decode_of_several_sequences_with_offload(smollm2_path, gpu_layers, monkeypatch):
    """Model.eval_batch (the server's several sequences in one step) gives the CPU's logits with layers
    offloaded, streamed for the big first step and resident or on the CPU for the decode steps."""
    _torch_path(monkeypatch)                             # the torch path both sides (see the module's note)
    ref, off = _load(smollm2_path, n_seq=2), _load(smollm2_path, n_seq=2, offload_device="cpu", gpu_layers=gpu_layers)
    ids = _prompt(ref)
    steps = [[(0, ids[:20]), (1, ids[20:])], [(0, [42]), (1, [7])], [(1, [9]), (0, [11])]]
    for batch in steps:
        assert torch.equal(off.eval_batch(batch), ref.eval_batch(batch))
    if gpu_layers < SMOL_LAYERS:
        assert off.offload.streamer.stats.layers >= SMOL_LAYERS - gpu_layers
    ref.close()
    off.close()
