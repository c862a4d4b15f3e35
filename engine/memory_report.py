"""Human-readable text for `cellar inspect`: the model summary and the memory plan's breakdown."""
from __future__ import annotations

from typing import Any

CONCERNS = ("weights", "kv", "compute", "overhead")
TITLES = {"weights": "Weights", "kv": "KV cache", "compute": "Compute scratch", "overhead": "Runtime overhead"}


def mib(n: int | None) -> str:
    if not n:
        return "-"
    if n >= 10 * 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_summary(s: dict[str, Any]) -> str:
    quant = ", ".join(f"{k} {v['tensors']}t {v['bits_per_weight']:.2f}bpw" for k, v in s["quant_mix"].items())
    swa = (f"{s['sliding_window']} tokens on {s['swa_layers']} of {s['layers']} layers ({s['swa_pattern']})"
           if s["sliding_window"] else "none")
    rows = [
        ("model", f"{s['name']} ({s['arch']})"),
        ("file", f"{s['file']} ({mib(s['file_size'])})"),
        ("parameters", f"{s['parameters'] / 1e6:.1f} M at {s['bits_per_weight']:.2f} bits per weight"),
        ("quant mix", quant),
        ("context", f"{s['context_length']} tokens (trained)"),
        ("layers", f"{s['layers']}, embedding {s['embedding_length']}, feed-forward {s['feed_forward_length']}"),
        ("attention", f"{s['heads']} heads, {s['kv_heads']} KV heads, head dim {s['head_dim']}"),
        ("sliding window", swa),
        ("vocabulary", f"{s['vocab_size']}" + (", output head tied to embeddings" if s["tied_embeddings"] else "")),
        ("chat template", "in the file" if s["chat_template"] else "none (a built-in one is used)"),
    ]
    return "\n".join(f"{k:<16}{v}" for k, v in rows)


def _layer_runs(layers) -> list[str]:
    """Consecutive layers with the same placement and sizes, as one line each."""
    out, run = [], []
    for r in layers + [None]:
        if run and (r is None or (r.place, r.weights, r.kv, r.swa) != (run[0].place, run[0].weights, run[0].kv,
                                                                       run[0].swa)):
            a, b = run[0].layer, run[-1].layer
            name = f"blk {a}" if a == b else f"blk {a}-{b}"
            kind = "SWA" if run[0].swa else "global"
            out.append(f"  {name:<12}{run[0].place.upper():<6}{kind:<8}weights {mib(run[0].weights):>11}   "
                       f"KV {mib(run[0].kv):>11} ({run[0].kv_cells} cells) each")
            run = []
        if r is not None:
            run.append(r)
    return out


def format_table(p) -> str:
    s = p.settings
    head = (f"Memory plan: ctx {s.ctx}, ubatch {s.n_ubatch}, KV {s.kv_type}, GPU layers {s.gpu_layers}, "
            f"{'mmap' if s.mmap else 'no-mmap'}{', mlock' if s.mlock else ''}")
    lines = [head, "", f"{'':<58}{'RAM':>12}{'VRAM':>12}"]
    for c in CONCERNS:
        lines.append(f"{TITLES[c]:<58}{mib(p.ram.sum(c)):>12}{mib(p.vram.sum(c)):>12}")
        for place, col in ((p.ram, 0), (p.vram, 1)):
            for i in place.items:
                if i.concern != c:
                    continue
                cells = [mib(i.nbytes), ""] if col == 0 else ["", mib(i.nbytes)]
                lines.append(f"  {i.what:<56}{cells[0]:>12}{cells[1]:>12}  {i.note}")
    lines.append(f"{'Total (RAM: predicted peak RSS)':<58}{mib(p.ram.total):>12}{mib(p.vram.total):>12}")
    lines.append(f"{'  + attention once the context is full (not at load)':<58}{mib(p.full_context_extra):>12}")
    lines.append(f"{'Peak RSS with a full context (judged against free)':<58}{mib(p.ram_peak_full_context):>12}")
    lines.append(f"{'Free now':<58}{mib(p.free_ram):>12}{mib(p.free_vram) if p.free_vram is not None else 'no GPU':>12}")
    lines += ["", "Per layer:"] + _layer_runs(p.layers)
    rec = p.recommendation
    lines += ["", f"Verdict: {p.verdict}.  Recommended: up to {rec.get('max_gpu_layers', 0)} GPU layers, "
                  f"context up to {rec.get('max_ctx', 0)} tokens (with the margin kept free)."]
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)
