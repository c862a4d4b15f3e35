"""Memory planner: what loading a model with given settings will cost, per place (RAM, VRAM) and per
concern (weights, KV cache, compute scratch, fixed runtime overhead), from the GGUF's metadata and
tensor table only. No tensor bytes are read and torch is not imported, so a plan takes milliseconds.

`ram.total` is the predicted peak RSS of the engine process after loading and generating (the runtime
allocates and touches KV and scratch at load, so the peak is reached early and stays flat). What each
term models, and how it was calibrated against measured peaks, is in docs/memory.md.
"""
from __future__ import annotations

import json
import resource
from dataclasses import dataclass, field, replace
from math import prod
from typing import Any

from engine.errors import BadModelFile, BadRequest
from engine.model_checks import MAX_LAYERS
from engine.model_info import Hparams, hparams, layer_of, model_summary
from engine.offload import placement_for

MiB = 1 << 20
KV_TYPES = {"f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34)}     # (values per block, bytes per block)

# ---- the fixed runtime overhead (measured, see docs/memory.md and engine/memory_probe.py) -----------------
# RSS of a fresh `python -c "import torch, numpy, engine.kernels, ..."`, the way the engine starts,
# measured once on the reference machine (torch 2.13 CPU, Linux x86-64) with `memory_probe.py baseline`.
BASE_RSS = 224 * MiB
METADATA_FACTOR = 1.12        # Python objects of the GGUF metadata vs the sum of their sizes (allocator slack)
TOKENIZER_PER_TOKEN = 175     # bytes per vocabulary entry (id map, scores, attributes) without the library
TOKENIZER_PER_MERGE = 340     # bytes per BPE merge in HF tokenizers' BPE model (without the library)
TOKENIZER_PER_TOKEN_C = 57    # with the library's tables (native/src/vocab.c): fitted on Gemma-3 (no merges)
TOKENIZER_PER_MERGE_C = 153   # ... and on SmolLM2: the pair table and the BPE pre-tokenizer's regexes
CUDA_HOST_RSS = 400 * MiB     # host RSS the CUDA runtime and cuBLAS add once a GPU is used (estimate)

# ---- fits / tight / won't fit -----------------------------------------------------------------------------
MARGIN_FRACTION = 0.10        # "tight" when less than this share of the plan (at least MARGIN_MIN) is left
MARGIN_MIN = 256 * MiB
CTX_STEP = 256                # max_ctx is a multiple of this (or the model's trained context)


@dataclass(frozen=True)
class Settings:
    ctx: int = 4096
    batch: int = 512
    ubatch: int = 512
    kv_type: str = "f16"
    gpu_layers: int = 0
    mmap: bool = True
    mlock: bool = False
    threads: int | None = None

    def __post_init__(self):
        if self.kv_type not in KV_TYPES:
            raise BadRequest(f"KV type {self.kv_type!r} is not one of {', '.join(KV_TYPES)}")
        for name in ("ctx", "batch", "ubatch"):
            if int(getattr(self, name)) <= 0:
                raise BadRequest(f"{name} must be above 0 (got {getattr(self, name)})")
        if self.gpu_layers < 0:
            raise BadRequest(f"gpu layers must be 0 or more (got {self.gpu_layers})")

    @property
    def n_ubatch(self) -> int:
        return min(self.ubatch, self.batch, self.ctx)


@dataclass
class Item:
    """One line of the breakdown: which concern it belongs to, what it is, bytes, and how it is held."""
    concern: str        # weights | kv | compute | overhead
    what: str
    nbytes: int
    note: str = ""


@dataclass
class Place:
    items: list[Item] = field(default_factory=list)

    def add(self, concern: str, what: str, nbytes: int, note: str = "") -> None:
        if nbytes:
            self.items.append(Item(concern, what, int(nbytes), note))

    def sum(self, concern: str) -> int:
        return sum(i.nbytes for i in self.items if i.concern == concern)

    @property
    def total(self) -> int:
        return sum(i.nbytes for i in self.items)

    def to_json(self) -> dict[str, int]:
        d = {c: self.sum(c) for c in ("weights", "kv", "compute", "overhead")}
        d["total"] = self.total
        return d


@dataclass
class LayerRow:
    layer: int
    place: str          # "ram" | "vram"
    weights: int
    kv: int
    kv_cells: int
    swa: bool


@dataclass
class MemoryPlan:
    model: str
    settings: Settings
    ram: Place
    vram: Place
    layers: list[LayerRow]
    free_ram: int
    free_vram: int | None          # None: no GPU found
    full_context_extra: int = 0    # RAM attention adds once prompts fill the context (not at load)
    verdict: str = ""              # "fits" | "tight" | "won't fit"
    recommendation: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ram_peak_full_context(self) -> int:
        """Peak RSS once a ubatch attends over a full context: what the verdict is judged on."""
        return self.ram.total + self.full_context_extra

    @property
    def fits(self) -> bool:
        return self.verdict != "won't fit"

    def to_json(self) -> dict[str, Any]:
        """DESIGN.md's inspect shape (bytes), plus detail keys."""
        return {
            "ram": self.ram.to_json(), "vram": self.vram.to_json(), "fits": self.fits,
            "recommendation": dict(self.recommendation),
            "ram_peak_full_context": self.ram_peak_full_context,
            "verdict": self.verdict, "free": {"ram": self.free_ram, "vram": self.free_vram},
            "settings": {"ctx": self.settings.ctx, "batch": self.settings.batch, "ubatch": self.settings.n_ubatch,
                         "kv_type": self.settings.kv_type, "gpu_layers": self.settings.gpu_layers,
                         "mmap": self.settings.mmap, "mlock": self.settings.mlock},
            "items": {place: [vars(i) for i in p.items] for place, p in (("ram", self.ram), ("vram", self.vram))},
            "layers": [vars(r) for r in self.layers],
            "notes": list(self.notes),
        }

    def format_table(self) -> str:
        from engine.memory_report import format_table
        return format_table(self)


# ---- the model's pieces ---------------------------------------------------------------------------------
def kv_row_bytes(kv_type: str, n_values: int) -> int:
    per, nbytes = KV_TYPES[kv_type]
    if n_values % per:
        raise BadRequest(f"KV type {kv_type} needs rows that are a multiple of {per} values (the model has "
                         f"{n_values}); use --kv-type f16")
    return n_values // per * nbytes


def kv_cells(h: Hparams, il: int, s: Settings) -> int:
    """Cells of layer il's KV cache (docs/architecture.md): the context, or window + ubatch on SWA layers."""
    return min(s.ctx, h.swa_window + s.n_ubatch) if h.swa_layers[il] else s.ctx


def kv_layer_bytes(h: Hparams, il: int, s: Settings) -> int:
    k, v = h.kv_width(il)
    return kv_cells(h, il, s) * (kv_row_bytes(s.kv_type, k) + kv_row_bytes(s.kv_type, v))


def _groups(g) -> tuple[list[dict], dict, dict]:
    """Tensor name -> (nbytes, shape) per layer, for the output head, and for everything else."""
    n_layer = max((layer_of(n) for n in g.tensors if layer_of(n) is not None), default=-1) + 1
    if n_layer > MAX_LAYERS:
        raise BadModelFile(f"{g.path.name}: a tensor names layer {n_layer - 1}, more than a model has "
                           f"({MAX_LAYERS}); the file is corrupt")
    layers: list[dict] = [{} for _ in range(n_layer)]
    output, other = {}, {}
    for name, t in g.tensors.items():
        il = layer_of(name)
        entry = (t.nbytes, tuple(t.shape))
        if il is not None:
            layers[il][name] = entry
        elif name.startswith(("output.", "output_norm.")):
            output[name] = entry
        else:
            other[name] = entry
    if "output.weight" not in g.tensors and "token_embd.weight" in g.tensors:   # tied: the head is the embedding
        output["token_embd.weight"] = other["token_embd.weight"]
    return layers, output, other


def _metadata_bytes(meta: dict) -> int:
    import sys
    total = 0
    for v in meta.values():
        if isinstance(v, list):
            total += sys.getsizeof(v) + sum(sys.getsizeof(x) for x in v)
        elif hasattr(v, "nbytes"):
            total += int(v.nbytes) + 112
        else:
            total += sys.getsizeof(v)
    return int(total * METADATA_FACTOR)


# ---- planning ---------------------------------------------------------------------------------------------
def plan(g, settings: Settings | None = None, *, free_ram: int | None = None,
         free_vram: int | None | bool = False) -> MemoryPlan:
    """The memory plan of loading `g` (a GGUFFile, opened with read_data=False is enough) with `settings`.
    free_ram / free_vram: what is free now (default: asked of psutil / NVML; free_vram=None means no GPU)."""
    s = settings or Settings()
    m = _Model.of(g)
    if free_ram is None or free_vram is False:
        fr, fv = free_memory()
        free_ram = fr if free_ram is None else free_ram
        free_vram = fv if free_vram is False else free_vram
    p = _plan_at(m, s, free_vram is not None)
    p.free_ram, p.free_vram = int(free_ram), free_vram
    p.verdict = _verdict(p.ram_peak_full_context, free_ram)
    if p.vram.total and free_vram is not None:
        v = _verdict(p.vram.total, free_vram)
        p.verdict = max((p.verdict, v), key=["fits", "tight", "won't fit"].index)
    elif p.vram.total:
        p.verdict = "won't fit"
        p.notes.append("GPU layers were asked for, but no NVIDIA GPU was found")
    p.recommendation = _recommend(m, s, free_ram, free_vram)
    return p


@dataclass
class _Model:
    """Everything a plan needs from the file, computed once (the recommendation plans many times)."""
    g: Any
    h: Hparams
    layers: list
    output: dict
    other: dict
    metadata_bytes: int
    tokenizer_bytes: int

    @classmethod
    def of(cls, g) -> "_Model":
        layers, output, other = _groups(g)
        h = hparams(g)
        layers += [{} for _ in range(h.n_layer - len(layers))]     # layers without tensors weigh nothing
        from engine.cpu_features import built_isas
        per_token, per_merge = ((TOKENIZER_PER_TOKEN_C, TOKENIZER_PER_MERGE_C) if built_isas()
                                else (TOKENIZER_PER_TOKEN, TOKENIZER_PER_MERGE))
        tok = (per_token * len(g.get("tokenizer.ggml.tokens") or ())
               + per_merge * len(g.get("tokenizer.ggml.merges") or ()))
        return cls(g, h, layers, output, other, _metadata_bytes(g.metadata), tok)


def _plan_at(m: _Model, s: Settings, have_gpu: bool) -> MemoryPlan:
    from engine.memory_model import cpu_compute, full_context_extra, gpu_plan
    g, h, layers, output, other = m.g, m.h, m.layers, m.output, m.other
    placement = placement_for(h.n_layer, s.gpu_layers)           # the runtime's placement, not a copy
    n_gpu = placement.n_gpu
    ram, vram = Place(), Place()
    rows = [LayerRow(il, "vram" if placement.on_gpu(il) else "ram", sum(n for n, _ in layers[il].values()),
                     kv_layer_bytes(h, il, s), kv_cells(h, il, s), h.swa_layers[il]) for il in range(h.n_layer)]
    notes: list[str] = []

    # weights
    held = "private (read into memory, --no-mmap)" if not s.mmap else "file-backed, shared page cache (mmap)"
    if s.mlock:
        held += ", locked"
    host = [r for r in rows if r.place == "ram" or not s.mmap]
    what = f"layers on CPU ({len(host)})" if s.mmap or not n_gpu else f"all layers ({len(host)}: --no-mmap reads the whole file)"
    ram.add("weights", what, sum(r.weights for r in host), held)
    emb = other.get("token_embd.weight", (0, ()))[0]
    ram.add("weights", "token embeddings" + (" (also the output head)" if "token_embd.weight" in output else ""),
            emb, held)
    out_host = sum(n for name, (n, _) in output.items() if name != "token_embd.weight")
    if not (n_gpu >= h.n_layer and s.mmap):
        ram.add("weights", "output head and norm", out_host, held)
    ram.add("weights", "other tensors", sum(n for name, (n, _) in other.items() if name != "token_embd.weight"), held)
    if s.mmap:
        ram.add("weights", "file header and metadata", g.data_offset, "file-backed (mmap)")

    # KV cache, per layer type
    for swa in (False, True):
        on_cpu = [r for r in rows if r.swa == swa and r.place == "ram"]
        if on_cpu:
            kind = f"sliding-window layers ({h.swa_window}+{s.n_ubatch} cells)" if swa else f"global layers ({s.ctx} cells)"
            ram.add("kv", f"{kind} x {len(on_cpu)}", sum(r.kv for r in on_cpu), f"{s.kv_type}, private, touched at load")

    # compute scratch and overhead
    for concern, what, nbytes, note in cpu_compute(g, h, s, layers, output):
        ram.add(concern, what, nbytes, note)
    ram.add("overhead", "Python, torch, numpy, engine modules", BASE_RSS, "measured once: fresh process RSS")
    ram.add("overhead", "GGUF metadata (Python objects)", m.metadata_bytes, "private")
    ram.add("overhead", "tokenizer", m.tokenizer_bytes, "private")

    if n_gpu:
        gpu_plan(g, h, s, layers, output, rows, ram, vram)
        if not have_gpu:
            notes.append("no NVIDIA GPU found: the VRAM column is what the GPU layers would need")
    if s.mlock:
        _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        need = ram.sum("weights")
        if hard != resource.RLIM_INFINITY and hard < need:
            notes.append(f"--mlock will be refused: RLIMIT_MEMLOCK allows {hard // MiB} MiB, the weights need "
                         f"{need // MiB} MiB (raise it with `ulimit -l`)")
    name = str(g.get("general.name") or g.path.stem)
    return MemoryPlan(name, s, ram, vram, rows, 0, None, full_context_extra(h, s), notes=notes)


def _verdict(need: int, free: int) -> str:
    if need > free:
        return "won't fit"
    return "tight" if free - need < max(MARGIN_MIN, int(MARGIN_FRACTION * need)) else "fits"


def _recommend(m: _Model, s: Settings, free_ram: int, free_vram: int | None) -> dict[str, int]:
    """The most GPU layers that fit at the asked context, and the largest context that fits with the
    asked GPU layers (or fewer, where the asked ones do not fit), both with the margin left over."""
    def ok(st: Settings) -> bool:
        p = _plan_at(m, st, free_vram is not None)
        return (_verdict(p.ram_peak_full_context, free_ram) == "fits"
                and (not p.vram.total or (free_vram is not None and _verdict(p.vram.total, free_vram) == "fits")))

    h = m.h
    max_gpu = 0
    if free_vram is not None:
        lo, hi = 0, h.n_layer
        while lo < hi:                      # VRAM grows with layers: the largest L that fits
            mid = (lo + hi + 1) // 2
            if ok(replace(s, gpu_layers=mid)):
                lo = mid
            else:
                hi = mid - 1
        max_gpu = lo
    top = max(h.n_ctx_train, CTX_STEP)
    candidates = list(range(CTX_STEP, top + 1, CTX_STEP))
    if candidates[-1] != top:
        candidates.append(top)
    lo, hi = -1, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(replace(s, ctx=candidates[mid], gpu_layers=min(s.gpu_layers, max_gpu))):
            lo = mid
        else:
            hi = mid - 1
    return {"max_gpu_layers": max_gpu, "max_ctx": candidates[lo] if lo >= 0 else 0}


def free_memory() -> tuple[int, int | None]:
    """(available RAM, free VRAM of GPU 0 or None without an NVIDIA GPU)."""
    from engine.telemetry import VramProbe, system_ram
    avail, _ = system_ram()
    probe = VramProbe()
    try:
        devices, _ = probe.sample()
    finally:
        probe.close()
    return avail, (devices[0]["total"] - devices[0]["used"]) if devices else None


# ---- `cellar inspect` -------------------------------------------------------------------------------------
def settings_from_args(args) -> Settings:
    gl = getattr(args, "gpu_layers", 0)
    return Settings(ctx=int(getattr(args, "ctx", None) or 4096), batch=int(getattr(args, "batch", 512) or 512),
                    ubatch=min(int(getattr(args, "batch", 512) or 512), 512),
                    kv_type=getattr(args, "kv_type", "f16") or "f16",
                    gpu_layers=0 if gl in (None, "auto") else int(gl), mmap=not getattr(args, "no_mmap", False),
                    mlock=bool(getattr(args, "mlock", False)), threads=getattr(args, "threads", None))


def inspect_command(args) -> int:
    """`cellar inspect MODEL [--ctx N] [--gpu-layers L|auto] [--kv-type T] [--no-mmap] [--mlock] [--json]`.
    args.model: a resolved path. Prints the JSON plan (with a "model" summary key) or the human table."""
    from engine.gguf import GGUFFile
    s = settings_from_args(args)
    with GGUFFile.open(args.model, read_data=False) as g:
        p = plan(g, s)
        if getattr(args, "gpu_layers", 0) == "auto":
            p = plan(g, replace(s, gpu_layers=p.recommendation["max_gpu_layers"]))
        summary = model_summary(g)
    if getattr(args, "json", False):
        print(json.dumps({**p.to_json(), "model": summary}))
    else:
        from engine.memory_report import format_summary
        print(format_summary(summary))
        print()
        print(p.format_table())
    return 0
