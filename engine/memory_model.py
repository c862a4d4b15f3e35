"""What the runtime allocates beyond weights and KV, as the planner models it: the CPU compute scratch
(engine/runtime.py) and the GPU side (engine/offload.py's VRAM plan). Kept apart from memory.py so the
part that follows the runtime's real allocations is in one small place."""
from __future__ import annotations

from math import prod

from engine.cpu_features import int8_prefill, int8_takes, scratch_kind
from engine.model_info import Hparams

F32, BF16 = 4, 2


# Calibrated on both real models (docs/memory.md): freed activation blocks that the allocator keeps, and
# the temporaries that RoPE, norms and casts make, over the live set counted below. (The torch path's
# factor: engine/prefill.py's TorchOps, the offload device's plan.)
ACT_FACTOR = 1.35
# engine/ops.py's attention blocks (not imported: the planner never imports torch): query rows per block,
# query rows x cells per block
ATTEND_BLOCK, ATTEND_SCORES = 128, 128 * 512
TORCH_WARM = 10 << 20       # RSS torch's thread pools and kernels keep after their first matmul and attention
ROPE_BASE_SWA = {"gemma3": 10000.0}    # sliding-window layers' RoPE base, where it differs


def _widest(groups, skip=lambda name, shape: False) -> int:
    return max((prod(shape) for grp in groups for name, (_, shape) in grp.items() if len(shape) == 2
                and not skip(name, shape)), default=0)


# native/src/qgemm.c: qact per 32 values; pblk per 32 columns; 8 unpacked rows (transpose8's input) per 32
# columns
ACT_Q8_BYTES, PANEL_BLOCK_BYTES, UNPACKED_ROWS_BYTES = 48, 1280, 8 * 32


def int8_buffers(g, layers, ub: int, threads: int) -> tuple[int, object]:
    """(bytes, skip) of the int8 prefill GEMM where it runs (cpu_features.int8_prefill): the calling
    thread's quantized x (ub rows of the widest input), and a panel and 8 unpacked rows per thread;
    skip(name, shape) tells the weights it takes, which the dequantization scratch then does not hold."""
    if not int8_prefill():
        return 0, lambda name, shape: False

    def takes(name, shape) -> bool:
        t = g.tensors.get(name)
        return t is not None and int8_takes(int(t.qtype), shape)

    cols = max((shape[1] for grp in layers for name, (_, shape) in grp.items() if len(shape) == 2
                and takes(name, shape)), default=0)
    return (ub * cols // 32 * ACT_Q8_BYTES + threads * cols // 32 * (PANEL_BLOCK_BYTES + UNPACKED_ROWS_BYTES)), takes


def activation_floats_per_token(h: Hparams) -> int:
    """f32 values per token alive at once in a layer: residual, normed input, q/k/v, attention output,
    and the feed-forward's gate, up and product (Gemma-3 adds its Q/K norms and post-norms; its GELU
    runs in place on the gate, base.geglu_into)."""
    n_q = max(h.n_head) * h.head_dim_k
    k, v = max(h.kv_width(il) for il in range(h.n_layer))
    n = 2 * h.n_embd + n_q + k + v + n_q + 3 * max(h.n_ff)
    if h.arch == "gemma3":
        n += n_q + k + 2 * h.n_embd
    return n


def ubatch_buffer_bytes(h: Hparams, ub: int, elt: int) -> int:
    """engine/prefill.py's UbatchBuffers: the batched layer's activations for ub tokens, made at load; elt
    the matmul's element size (the scratch's: 2 for bf16, 4 for f32)."""
    n_q = max(h.n_head) * h.head_dim_k
    n_a = max(h.n_head) * h.head_dim_v
    k, v = max(h.kv_width(il) for il in range(h.n_layer))
    roped = F32 * (n_q + k + v) if elt != F32 else 0      # f32 products are roped in place
    return ub * (elt * (2 * h.n_embd + n_q + k + v + n_a + 2 * max(h.n_ff)) + roped)


def transient_floats_per_token(h: Hparams) -> int:
    """f32 values per token the batched layer still allocates per ubatch: the residual and the embedding
    rows, the query rounded to the cache's type (two copies); Gemma-3 scales its embedding rows (one more)."""
    n_q = max(h.n_head) * h.head_dim_k
    return 2 * h.n_embd + 2 * n_q + (h.n_embd if h.arch == "gemma3" else 0)


def attention_block_bytes(h: Hparams, threads: int) -> int:
    """engine/ops.py's per-thread attention buffers (a block's query, scores and output at their largest;
    the scores one K/V head's query group at a time), one set per thread that runs blocks."""
    n_head = max(h.n_head)
    group = max(nh // max(nkv, 1) for nh, nkv in zip(h.n_head, h.n_head_kv))
    return threads * F32 * (n_head * ATTEND_BLOCK * (h.head_dim_k + h.head_dim_v) + group * ATTEND_SCORES)


def _threads(s) -> int:
    import os
    try:
        return s.threads or max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return s.threads or max(1, os.cpu_count() or 1)


def kv_f32_bytes(h: Hparams, s) -> int:
    """KVCache.read_f32's buffers: per cache, its cells' K and V as f32 (every layer of the cache reuses
    them), made and touched by the warmup at load."""
    k, v = max(h.kv_width(il) for il in range(h.n_layer))
    cells = s.ctx + (min(s.ctx, h.swa_window + s.n_ubatch) if any(h.swa_layers) else 0)
    return F32 * cells * (k + v)


def rope_tables(g, h: Hparams) -> int:
    """The runtime's cos and sin tables (f32, n_ctx x n_rot/2) per distinct RoPE base."""
    bases = {"global"} | ({"swa"} if any(h.swa_layers) and h.arch in ROPE_BASE_SWA
                          and float(g.get(f"{h.arch}.rope.freq_base", 0)) != ROPE_BASE_SWA[h.arch] else set())
    n_rot = int(g.get(f"{h.arch}.rope.dimension_count", h.head_dim_k))
    return len(bases) * 2 * (n_rot // 2) * F32


def cpu_compute(g, h: Hparams, s, layers, output) -> list[tuple[str, str, int, str]]:
    """(concern, what, bytes, note) of the CPU runtime beyond weights and KV rows. The activations and
    attention below are those of one full ubatch, reached at load by the warmup (engine/runtime.py)."""
    ub = s.n_ubatch
    kind = scratch_kind()                  # the runtime's scratch: bf16 on a CPU with a bf16 matmul unit
    norms = sum(n for grp in layers for n, shape in grp.values() if len(shape) == 1)
    norms += sum(n for name, (n, shape) in output.items() if len(shape) == 1)
    cells = s.ctx + (min(s.ctx, h.swa_window + ub) if any(h.swa_layers) else 0)
    i8_bytes, i8_takes = int8_buffers(g, layers, ub, _threads(s))
    return [
        ("kv", "cell positions and sequences", 3 * 8 * cells, "int64 per cell"),
        ("compute", f"dequantized weight ({kind}, reused)",
         (BF16 if kind == "bf16" else F32) * max(_widest(layers, i8_takes), 1),
         "largest layer matrix the int8 GEMM does not take, for prefill"),
        ("compute", "RoPE cos/sin tables", rope_tables(g, h) * s.ctx, f"f32, {s.ctx} positions"),
        ("compute", "norm weights (f32 copies)", norms, "private"),
        ("compute", f"activations ({ub} tokens, buffers)",
         ubatch_buffer_bytes(h, ub, BF16 if kind == "bf16" and not i8_bytes else F32),
         "made at load, reused by every ubatch"),
        ("compute", f"per-ubatch rows ({ub} tokens)", int(ACT_FACTOR * F32 * ub * transient_floats_per_token(h)),
         "f32: residual, embedding, rounded query"),
        ("compute", "attention blocks", attention_block_bytes(h, _threads(s)), f"per thread ({_threads(s)})"),
        ("compute", "K/V read as f32 (one layer per cache)", kv_f32_bytes(h, s), "every cell, made at load"),
        ("compute", "logits", 2 * F32 * h.n_vocab, "f32, last token"),
        ("overhead", "torch thread pools and kernels", TORCH_WARM, "measured once: after the first matmul"),
    ] + ([("compute", "int8 GEMM buffers", i8_bytes, "quantized x of a ubatch, a weight panel per thread")]
         if i8_bytes else [])


def full_context_extra(h: Hparams, s) -> int:
    """What the process adds over the load's peak once prompts fill the context. Nothing the runtime
    allocates grows with the cells: attention (engine/ops.py attend) takes fewer query rows per block as
    the cells grow, into per-thread buffers of its largest block, makes no mask tensor, and reads K/V as
    f32 into buffers of every cell made at load (kv_f32_bytes); the batched layer writes into buffers made
    at load (engine/prefill.py). What is seen is glibc keeping freed blocks of the few rows still
    allocated per ubatch: SmolLM2 ctx 2048 on a 2-core Xeon, default malloc, +1.05..1.22% (4.5-5.3 MiB,
    five runs; +3.2..6.8% before the buffers); modelled as one more ubatch of them wherever a prompt can
    take more than one ubatch."""
    if s.ctx <= s.n_ubatch:
        return 0
    return int(ACT_FACTOR * F32 * s.n_ubatch * transient_floats_per_token(h))


def gpu_plan(g, h: Hparams, s, layers, output, rows, ram, vram) -> None:
    """VRAM items of `--gpu-layers` (offload.plan_vram), and the host memory the GPU path adds."""
    from engine.memory import CUDA_HOST_RSS
    from engine.offload import placement_for, plan_vram
    placement = placement_for(h.n_layer, s.gpu_layers)
    v = plan_vram(layers, output, placement, kv_bytes_per_layer=[r.kv for r in rows], ubatch=s.n_ubatch,
                  activation_floats_per_token=activation_floats_per_token(h))
    n = placement.n_gpu
    vram.add("weights", f"layers on GPU ({n})", sum(v.weights_per_layer.values()), "raw GGUF blocks, packed")
    vram.add("weights", "output head and norm", v.output, "resident once every layer is")
    for swa in (False, True):
        on_gpu = [r for r in rows if r.swa == swa and r.place == "vram"]
        if on_gpu:
            kind = "sliding-window layers" if swa else "global layers"
            vram.add("kv", f"{kind} x {len(on_gpu)}", sum(r.kv for r in on_gpu), s.kv_type)
    vram.add("compute", "streaming slots (2 layers)", v.staging_slots, "host layers streamed for prefill")
    vram.add("compute", "dequantized weight + activations", v.scratch, "f32, per step, kept by torch's cache")
    vram.add("overhead", "CUDA context, torch and cuBLAS", v.context, "estimate")
    ram.add("compute", "pinned staging buffers (2 layers)", v.pinned_host, "page-locked")
    ram.add("overhead", "CUDA runtime libraries", CUDA_HOST_RSS, "estimate")
