"""What every architecture shares: hyperparameters, RMSNorm, RoPE (llama.cpp's "normal" and "neox"
pairings, with its f32 angle recurrence), attention over the KV cache, and the decoder loop.

An architecture file subclasses Transformer, reads its hyperparameters from the GGUF, and writes
`embed` and `block` top to bottom. Weights stay QTensor views of the GGUF mapping; only the small
F32 norm vectors become torch tensors.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from engine import decode_native, kernels
from engine.errors import BadModelFile
from engine.kv_cache import KVCache, KVMemory
from engine.gpu_kernels import quantize_q8
from engine.ops import Scratch, as_f32, attend, get_rows, linear
from engine.quant import QTensor

Progress = Callable[[float, str], None]


@dataclass
class Hparams:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int                      # K and Q width per head
    head_dim_v: int
    n_ff: int
    eps: float
    n_rot: int                         # rotated dimensions per head
    rope_base: float
    rope_neox: bool
    n_ctx_train: int
    swa_window: int = 0
    swa_layers: frozenset[int] = field(default_factory=frozenset)
    rope_base_swa: float = 10000.0
    rope_scale: float = 1.0            # linear position scaling (global layers only)
    rope_factors: tuple[float, ...] = ()   # per rotated pair, theta / factor (GGUF rope_freqs: Llama 3.1+)
    q_scale: float = 0.0               # query scaling; 0 means 1/sqrt(head_dim)

    def rope_of(self, il: int) -> tuple[float, float]:
        """(base, scale) of layer il's RoPE."""
        return (self.rope_base_swa, 1.0) if il in self.swa_layers else (self.rope_base, self.rope_scale)


def meta(g, key: str, cast=None):
    """A required metadata key, cast; one-line BadModelFile naming it when missing or malformed."""
    value = g.require(key)
    try:
        return cast(value) if cast else value
    except (TypeError, ValueError):
        raise BadModelFile(f"{g.path.name}: metadata key '{key}' has an unusable value {value!r}; "
                           "re-convert the model") from None


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension with ggml's rounding points: the f32 squares summed in double,
    mean rounded to f32, scale = 1.0f / sqrtf(mean + eps), then (x * scale) * w as two f32 products.
    The square root is taken in double and rounded (correctly rounded sqrtf): torch's f32 sqrt is not
    always (sqrt(790.4998) came out 1 ulp low)."""
    lib = kernels._lib
    if lib is not None and x.dim() == 2 and x.dtype == torch.float32 and w.dtype == torch.float32 \
            and x.device.type == "cpu" and w.device.type == "cpu" and x.stride(1) == 1 and w.is_contiguous() \
            and w.numel() == x.shape[1] and x.shape[0] > 0:
        # the native pass (native/src/prefill.c, the prefill's and decode's own): the squares summed in
        # order, as llama.cpp does; one call where the torch ops below cost a token ~0.2 ms
        out = torch.empty(x.shape, dtype=torch.float32)
        lib.cellar_pf_rms_norm(x.shape[0], x.shape[1], x.data_ptr(), x.stride(0), 0, w.data_ptr(), eps,
                               out.data_ptr(), out.stride(0), 0)
        return out
    ss = torch.sum(x * x, -1, keepdim=True, dtype=torch.float64)
    root = (ss / x.shape[-1]).float().add_(eps).double().sqrt_().float()
    return x * root.reciprocal_() * w


def _libm():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        for name in ("cosf", "sinf"):
            getattr(lib, name).restype = ctypes.c_float
            getattr(lib, name).argtypes = [ctypes.c_float]
        lib.powf.restype = ctypes.c_float
        lib.powf.argtypes = [ctypes.c_float, ctypes.c_float]
        return lib
    except (OSError, AttributeError):
        return None


_LIBM = _libm()


def _trig_f32(angles: np.ndarray, fn: str) -> np.ndarray:
    """cosf / sinf of f32 angles near what the C library gives (ggml's rope cache calls cosf and sinf),
    where the native library (kernels.trig_f32, every value from the C library) is absent. Computed in
    double and rounded; where the double lies near a midpoint between two floats the C library itself is
    asked. glibc's cosf is not correctly rounded everywhere: on Gemma-3's table (256 dims, 2048
    positions) this differs from it by one ulp on 56 of 262144 values."""
    exact = (np.cos if fn == "cosf" else np.sin)(angles.astype(np.float64))
    out = exact.astype(np.float32)
    if _LIBM is None:
        return out
    ulp = np.spacing(np.abs(out)).astype(np.float64)
    near = np.abs(exact - out) > 0.45 * ulp
    if near.any():
        f = getattr(_LIBM, fn)
        out[near] = [f(float(a)) for a in angles[near]]
    return out


class Rope:
    """Rotary embedding as ggml computes it: theta_i = p * base^(-2i/n_rot), the powers accumulated in
    f32 one by one, cosf/sinf of each; "normal" rotates pairs (x[2i], x[2i+1]), "neox" pairs
    (x[i], x[i + n_rot/2]), each as ggml's compiled loop rounds it: x0*cos - x1*sin and x0*sin + x1*cos
    with the first product fused into the add (an FMA), the second rounded to f32."""

    def __init__(self, n_rot: int, base: float, neox: bool, n_pos: int, freq_scale: float = 1.0,
                 factors: tuple[float, ...] = ()):
        self.n_rot, self.neox = n_rot, neox
        # ggml's freq_factors (Llama 3.1+'s rope_freqs tensor): pair i turns by theta_i / factor_i, in f32
        self.factors = np.asarray(factors, dtype=np.float32) if len(factors) else None
        if _LIBM is not None:
            self.scale = np.float32(_LIBM.powf(float(np.float32(base)), float(np.float32(-2.0 / n_rot))))
        else:
            self.scale = np.float32(base) ** np.float32(-2.0 / n_rot)
        self.freq_scale = np.float32(freq_scale)
        self.cos, self.sin = self._table(np.arange(n_pos))
        self._last_pos: np.ndarray | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] = (self.cos[:0], self.sin[:0])

    def _table(self, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        theta = pos.astype(np.float32)
        angles = np.empty((len(pos), self.n_rot // 2), dtype=np.float32)
        for i in range(self.n_rot // 2):
            angles[:, i] = theta if self.factors is None else theta / self.factors[i]
            theta = theta * self.scale
        if self.freq_scale != 1:
            angles *= self.freq_scale
        native = kernels.trig_f32(angles)     # the same C library calls, one pass (Gemma-3's 2 tables: 77 -> ~8 ms)
        if native is not None:
            return torch.from_numpy(native[0]), torch.from_numpy(native[1])
        return torch.from_numpy(_trig_f32(angles, "cosf")), torch.from_numpy(_trig_f32(angles, "sinf"))

    def angles(self, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if pos is self._last_pos:             # every layer of a step rotates at the same positions
            return self._last
        if len(pos) and 0 <= pos.min() and pos.max() < len(self.cos):
            idx = torch.from_numpy(pos)
            cs = self.cos[idx], self.sin[idx]
        else:
            cs = self._table(pos)
        self._last_pos, self._last = pos, cs
        return cs

    def __call__(self, x: torch.Tensor, pos: np.ndarray) -> torch.Tensor:
        """x [n, heads, head_dim] rotated at positions pos [n]."""
        cos, sin = self.angles(pos)
        if cos.device != x.device:            # a layer on the GPU (offload)
            cos, sin = cos.to(x.device), sin.to(x.device)
        cos, sin = cos[:, None, :], sin[:, None, :]
        r, rest = x[..., : self.n_rot], x[..., self.n_rot:]
        if self.neox:
            a, b = r[..., : self.n_rot // 2], r[..., self.n_rot // 2:]
        else:
            a, b = r[..., 0::2], r[..., 1::2]
        a64 = a.double()
        lo = torch.addcmul(-(b * sin).double(), a64, cos.double()).float()
        hi = torch.addcmul((b * cos).double(), a64, sin.double()).float()
        out = torch.cat([lo, hi], -1) if self.neox else torch.stack([lo, hi], -1).flatten(-2)
        return torch.cat([out, rest], -1) if rest.shape[-1] else out


@dataclass
class Step:
    """One ubatch: its tokens, positions, sequence (one id, or one per token in a batch of several
    sequences), per cache the claimed slots, the cells to read and the mask over them, and which rows
    want logits (None: the last one only)."""
    ids: list[int]
    pos: np.ndarray
    seq_id: int | np.ndarray
    slots: dict[str, np.ndarray]
    n_kv: dict[str, int]
    masks: dict[str, torch.Tensor]
    out_rows: list[int] | None = None
    # several sequences (Model.eval_batch): per cache, for each sequence its query rows [r0, r1), its
    # own cells in position order and the mask over them; attention then reads each sequence's cells only
    groups: dict[str, list[tuple[int, int, torch.Tensor, torch.Tensor]]] | None = None
    placed: Any = None                # engine.offload_runtime.OffloadStep while layers run offloaded


# llama.cpp's attention without flash attention rounds q and the probabilities to an f16 / bf16 cache's
# type (engine.ops.attend); over a q8_0 cache it runs its flash attention, which quantizes q to q8_0 blocks
# for the dot with K (what native/src/decode.c does too, and base.attention below; the softmax and the V
# sum stay f32). Without the q8_0 query, Gemma-3's 'plain' reference parted at 4 near-ties, with it at 2.
ROUNDS_LIKE = {"f16": torch.float16, "bf16": torch.bfloat16}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, il: int, step: Step,
              scale: float, out: torch.Tensor | None = None, rows: list[int] | None = None) -> torch.Tensor:
    """Store this ubatch's k, v [n, heads_kv, dim] for layer il, then attend q [n, heads, dim] over the
    cache's cells in use (GQA: each K/V head serves n_head / n_head_kv query heads). -> [n, heads*dim_v],
    in out when given (engine/prefill.py's buffer). rows (the last layer of a prompt, Transformer.forward;
    not with Step.groups): every row's K/V stored, only these query rows attend -> [len(rows), ...]."""
    n = k.shape[0]
    n_head_kv = k.shape[1]
    name = cache.name
    if rows is not None:
        if step.groups is not None:
            raise ValueError("attention: rows are for a step of one sequence")
        q = q[rows]
    if cache.kv_type == "q8_0" and q.shape[-1] % 32 == 0:
        q = quantize_q8(q, 32)        # as llama.cpp's flash attention over a q8_0 cache (ROUNDS_LIKE)
    if step.groups is not None:
        if step.placed is None:
            cache.write(il, step.slots[name], k.reshape(n, -1), v.reshape(n, -1))
        else:                                 # offload: rows stored where layer il's cache lives
            step.placed.store(cache, il, step.slots[name], k.reshape(n, -1), v.reshape(n, -1))
        a = attention_by_sequence(q, cache, il, step.groups[name], n_head_kv, scale)
        return a if out is None else out.copy_(a)
    if step.placed is None:
        cache.write(il, step.slots[name], k.reshape(n, -1), v.reshape(n, -1))
        if rows is not None and not rows:
            return q.new_empty(0, q.shape[1] * cache.v_width // n_head_kv)
        # K/V into the cache's f32 buffers (made at load); the mask a block of rows at a time where the
        # step keeps it as cells (Model._step): a prompt at a full context allocates nothing that grows
        # with the cells
        K, V = cache.read_f32(il, step.n_kv[name])
        cells = getattr(step.masks, "cells", None)
        mask = cells[name] if cells is not None else step.masks[name]
        if rows is not None:
            mask = mask.rows(rows) if cells is not None else mask[rows]
    else:                                     # offload: K/V where layer il's cache lives, mask on q's device
        K, V = step.placed.kv(cache, il, step.slots[name], k.reshape(n, -1), v.reshape(n, -1), step.n_kv[name])
        if rows is not None and not rows:
            return q.new_empty(0, q.shape[1] * cache.v_width // n_head_kv)
        mask = step.masks[name]
        mask = step.placed.on(mask if rows is None else mask[rows], q.device)
    return attend(q, K.view(-1, n_head_kv, cache.k_width // n_head_kv),
                  V.view(-1, n_head_kv, cache.v_width // n_head_kv), mask, scale, ROUNDS_LIKE.get(cache.kv_type), out)


def attention_by_sequence(q: torch.Tensor, cache: KVCache, il: int, groups, n_head_kv: int,
                          scale: float) -> torch.Tensor:
    """Each sequence's query rows attend over that sequence's own cells only (Step.groups), so what a
    sequence computes does not depend on what the other sequences in the cache hold. -> [n, heads*dim_v]"""
    out = []
    for r0, r1, cells, mask in groups:
        K, V = cache.read_cells(il, cells)
        K, V, mask = K.to(q.device), V.to(q.device), mask.to(q.device)     # no-ops unless offloaded
        out.append(attend(q[r0:r1], K.view(-1, n_head_kv, cache.k_width // n_head_kv),
                          V.view(-1, n_head_kv, cache.v_width // n_head_kv), mask, scale,
                          ROUNDS_LIKE.get(cache.kv_type)))
    return out[0] if len(out) == 1 else torch.cat(out)


def past_attention(x: torch.Tensor, w: dict, scratch: Scratch, rows: list[int]):
    """The last layer of a prompt past its attention (rows: those that want logits): x's rows, and the
    steps for them (a row or a few: the GEMV path)."""
    from engine.prefill import layer_ops
    x = x[rows]
    return x, layer_ops(x, w, scratch)


class Transformer:
    """A decoder-only model on GGUF weights. Subclasses set `arch`, read `Hparams` in `hparams(g)`,
    and define `embed` and `block`; the output head is the shared tail."""

    arch = ""
    norm_names: tuple[str, ...] = ()          # per-layer F32 vectors turned into torch tensors
    offload = None                            # engine.offload_runtime.Offload, set by offload_model.attach

    def __init__(self, g, progress: Progress | None = None):
        self.g = g
        self.hp = self.hparams(g)
        hp = self.hp
        self.tok_embd = self.qtensor("token_embd.weight")
        self.layers: list[dict[str, QTensor | torch.Tensor]] = []
        for il in range(hp.n_layer):
            prefix = f"blk.{il}."
            layer: dict[str, QTensor | torch.Tensor] = {}
            for name in g.tensors:
                if name.startswith(prefix):
                    short = name[len(prefix):].removesuffix(".weight")
                    t = self.qtensor(name)
                    layer[short] = as_f32(t) if short in self.norm_names else t
            self.layers.append(layer)
            if progress:
                progress((il + 1) / hp.n_layer, f"layer {il + 1}/{hp.n_layer}")
        self.output_norm = as_f32(self.qtensor("output_norm.weight"))
        self.output = self.qtensor("output.weight") if "output.weight" in g.tensors else self.tok_embd
        self.ropes: dict[tuple[float, float], Rope] = {}

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def hparams(cls, g) -> Hparams:
        raise NotImplementedError

    def qtensor(self, name: str) -> QTensor:
        t = self.g.tensors.get(name)
        if t is None:
            raise BadModelFile(f"{self.g.path.name}: tensor '{name}' is missing; the file is incomplete or "
                               f"not a {self.arch} model")
        return QTensor(name, t.qtype, t.shape, self.g.tensor_data(name))

    def matrices(self) -> list[QTensor]:
        """The layer matrices a batched linear dequantizes (the output head runs on one row only)."""
        return [t for layer in self.layers for t in layer.values() if isinstance(t, QTensor) and len(t.shape) == 2]

    def make_kv(self, n_ctx: int, ubatch: int, kv_type: str, n_seq: int = 1, pages=None) -> KVMemory:
        """One global cache of n_ctx cells, and for sliding-window layers one of
        min(n_ctx, window * n_seq + ubatch) (each of n_seq sequences keeps its own window); pages: a
        load's engine.pages.PageWork, which zero-fills them on its thread."""
        hp = self.hp
        for base, scale in {hp.rope_of(il) for il in range(hp.n_layer)}:
            self.ropes[(base, scale)] = Rope(hp.n_rot, base, hp.rope_neox, n_ctx, scale, hp.rope_factors)
        kw, vw = hp.n_head_kv * hp.head_dim, hp.n_head_kv * hp.head_dim_v
        glob = [il for il in range(hp.n_layer) if il not in hp.swa_layers]
        swa = [il for il in range(hp.n_layer) if il in hp.swa_layers]
        caches = [KVCache("global", glob, n_ctx, kw, vw, kv_type, pages=pages)]
        if swa:
            n_swa = min(n_ctx, hp.swa_window * max(1, n_seq) + ubatch)
            caches.append(KVCache("swa", swa, n_swa, kw, vw, kv_type, hp.swa_window, pages=pages))
        mem = KVMemory(caches)
        decode_native.attach(self, mem)           # one-token layers in one native call (decode)
        return mem

    def rope_of(self, il: int) -> Rope:
        return self.ropes[self.hp.rope_of(il)]

    def rope_shift(self, il: int, k: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """K rows [m, width] of layer il rotated further by delta [m] positions (the K-shift)."""
        hp = self.hp
        rot = self.rope_of(il)(k.view(-1, hp.n_head_kv, hp.head_dim), delta.numpy())
        return rot.reshape(k.shape)

    # ---- running ----------------------------------------------------------------------------------
    def embed(self, ids: list[int]) -> torch.Tensor:
        return get_rows(self.tok_embd, ids)

    def block(self, il: int, x: torch.Tensor, w: dict, step: Step, kv: KVMemory, scratch: Scratch,
              rows: list[int] | None = None) -> torch.Tensor:
        """Layer il on x with its weights w (where the layer runs: self.layers[il] on the CPU). rows: past
        the attention's K/V, only these rows go on (attention(rows=), then past_attention); the result
        has len(rows) rows."""
        raise NotImplementedError

    def place_step(self, step: Step):
        """Where each layer of this step runs and with which weights (an OffloadStep, or all on the CPU)."""
        from engine.offload_runtime import HostStep
        if self.offload is None:
            return HostStep(self.layers, {"output": self.output, "output_norm": self.output_norm})
        step.placed = self.offload.step(len(step.ids))
        return step.placed

    def forward(self, step: Step, kv: KVMemory, scratch: Scratch) -> torch.Tensor:
        """Run one ubatch through every layer; f32 logits [n_vocab] of its last token, or
        [len(step.out_rows), n_vocab] of those rows when the step names them (none: the ubatch only fills
        the cache). As llama.cpp's graph does with its output ids, the last layer runs past its K/V only
        for the rows that want logits (a prompt's last token), and the output head only for them."""
        n, last = len(step.ids), self.hp.n_layer - 1
        want = list(step.out_rows) if step.out_rows is not None else [n - 1]
        x = self.embed(step.ids)
        with self.place_step(step) as st:
            keep = None
            if decode_native.all_layers(self, x, step, kv, st.weights) is None:   # one token: one native call
                if len(want) < n and step.groups is None:
                    keep = want
                for il in range(self.hp.n_layer):
                    x = self.block(il, st.to_layer(il, x), st.weights(il), step, kv, scratch,
                                   keep if il == last else None)
                    st.done(il)
            if keep is None:     # a run of rows (a decode's one, a prompt's last): a view, not a gather
                x = x[want[0]:want[-1] + 1] if want and want == list(range(want[0], want[-1] + 1)) else x[want]
            if not want:
                return torch.empty(0, self.hp.n_vocab)
            x, out = x.to(st.output_device), st.output_weights
            x = self.logits(linear(rms_norm(x, out["output_norm"], self.hp.eps), out["output"]))
            return (x if step.out_rows is not None else x[0]).cpu()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _gelu_table() -> torch.Tensor:
    """ggml's GELU(tanh) table (GGML_GELU_FP16): the f32 formula on every half, rounded to a half; the
    native library's own copy when it is loaded, so the torch and native paths read the same values."""
    from engine import kernels
    lib = getattr(kernels, "_lib", None)
    try:
        if lib is not None:
            raw = np.ctypeslib.as_array((ctypes.c_uint16 * 65536).in_dll(lib, "cellar_gelu_f16"))
            return torch.from_numpy(raw.copy().view(np.float16).astype(np.float32))
    except (ValueError, AttributeError):
        pass
    x = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(all="ignore"):
        y = np.float32(0.5) * x * (np.float32(1) + np.tanh(np.float32(0.7978845608028654) * x
                                                            * (np.float32(1) + np.float32(0.044715) * x * x)))
    return torch.from_numpy(y.astype(np.float16).astype(np.float32))


_GELU_F16: torch.Tensor | None = None


def gelu_ggml(x: torch.Tensor) -> torch.Tensor:
    """GELU(tanh) as llama.cpp's CPU geglu computes it: 0 at x <= -10, x at x >= 10, else the table
    entry of x rounded to a half."""
    global _GELU_F16
    if _GELU_F16 is None:
        _GELU_F16 = _gelu_table()
    t = _GELU_F16.to(x.device)[x.to(torch.float16).view(torch.int16).long() & 0xFFFF]
    return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, t))


def _native_geglu():
    from engine import kernels
    lib = getattr(kernels, "_lib", None)
    fn = getattr(lib, "cellar_geglu", None) if lib is not None else None
    if fn is not None and fn.argtypes is None:
        fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        fn.restype = None
    return fn


def geglu_into(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gelu_ggml(gate) * up, in place on gate: one native pass where the library has it (the table
    lookup in torch was a quarter of Gemma-3's prefill), the same values either way."""
    fn = _native_geglu()
    if (fn is not None and gate.device.type == "cpu" and gate.dtype == up.dtype == torch.float32
            and gate.is_contiguous() and up.is_contiguous() and gate.shape == up.shape):
        fn(gate.numel(), gate.data_ptr(), up.data_ptr())
        return gate
    return gelu_ggml(gate).mul_(up)


def inv_sqrt(n: int) -> float:
    return 1.0 / math.sqrt(n)
