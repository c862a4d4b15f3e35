"""What the runtime allocates beyond weights and KV, as the planner models it: the CPU compute scratch
(engine/runtime.py) and the GPU side (engine/offload.py's VRAM plan). Kept apart from memory.py so the
part that follows the runtime's real allocations is in one small place."""
from __future__ import annotations

from math import prod

from engine.model_info import Hparams

F32, BF16 = 4, 2


def _widest(groups) -> int:
    return max((prod(shape) for grp in groups for _, shape in grp.values() if len(shape) == 2), default=0)


def activation_floats_per_token(h: Hparams) -> int:
    """f32 values per token alive at once in a layer: residual, normed input, q/k/v, attention output,
    and the feed-forward's gate, up and product."""
    n_q = max(h.n_head) * h.head_dim_k
    k, v = max(h.kv_width(il) for il in range(h.n_layer))
    return 2 * h.n_embd + n_q + k + v + n_q + 3 * max(h.n_ff)


def cpu_compute(g, h: Hparams, s, layers, output) -> list[tuple[str, int, str]]:
    """(what, bytes, note) of the CPU runtime's scratch, allocated and touched at load."""
    ub = s.n_ubatch
    widest = _widest(layers)
    n_q_heads = max(h.n_head)
    return [
        ("dequantized weight (bf16, reused)", BF16 * widest, "largest layer matrix, for prefill"),
        (f"activations ({ub} tokens)", F32 * ub * activation_floats_per_token(h), "f32"),
        ("attention scores", F32 * n_q_heads * ub * s.ctx, f"f32, {n_q_heads} heads x {ub} x {s.ctx}"),
        ("logits", F32 * h.n_vocab, "f32, last token"),
    ]


def gpu_plan(g, h: Hparams, s, layers, output, rows, ram, vram) -> None:
    """VRAM items of `--gpu-layers` (offload.plan_vram), and the host memory the GPU path adds."""
    from engine.memory import CUDA_HOST_RSS
    from engine.offload import Placement, plan_vram
    placement = Placement(h.n_layer, s.gpu_layers)
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
