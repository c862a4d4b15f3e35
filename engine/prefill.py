"""The batched layer's steps between its matmuls (RMSNorm, residual adds, RoPE, the gated feed-forward),
and the ubatch's activation buffers they write into.

    bufs = UbatchBuffers(hp, n_ubatch, scratch.batch_dtype)   # once, at load (engine/runtime.py)
    L = layer_ops(x, ws, scratch)          # per layer: NativeOps over bufs, or TorchOps
    h = L.norm(x, w["attn_norm"], eps)     # ... as engine/models/llama.py's block reads

On the CPU with the native library (native/src/prefill.c), a ubatch of more rows than the GEMV takes
runs NativeOps: each step is one pass over the rows on the native pool, reading a bf16 matmul's product
as it is and writing the next matmul's input in its type (no `.float()` or `.to(bf16)` pass, no
temporary), into buffers made once at load, so a prefill allocates (almost) nothing per ubatch and the
allocator has no freed blocks to keep (docs/memory.md). Everywhere else (no library, a GPU layer, a few
rows, CELLAR_PREFILL=gemm) TorchOps runs the same steps in torch.

Numerics: both follow llama.cpp's rounding points (base.rms_norm, base.Rope); the native RMSNorm sums
each row's squares in order as llama.cpp does (torch sums them in another order: the same f32 mean but
in rare near-ties), the native RoPE rounds once where torch's double arithmetic rounds twice (again the
same but in rare cases), and the native SiLU is ggml's own exp polynomial (torch's differs by an ulp here
and there). GELU is ggml's f16 table in both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine import kernels
from engine.ops import Scratch, batched_dtype, linear, linear_many

KIND = {torch.float32: 0, torch.bfloat16: 1}
SILU, GELU = 0, 1


class UbatchBuffers:
    """A batched layer's activations for up to `rows` tokens, made and touched at load: the normed input
    of the matmuls, the Q/K/V products and Q/K roped (f32), V as f32 for the cache, the attention output,
    the output (and down) projection's product, gate and up (the gated product lands on gate)."""

    def __init__(self, hp, rows: int, dtype: torch.dtype, pages=None):
        nq, nk = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        nv, na = hp.n_head_kv * hp.head_dim_v, hp.n_head * hp.head_dim_v
        self.rows, self.dtype = rows, dtype
        widths = {"h": (hp.n_embd, dtype), "q": (nq, dtype), "k": (nk, dtype), "v": (nv, dtype),
                  "a": (na, dtype), "o": (hp.n_embd, dtype), "gate": (hp.n_ff, dtype), "up": (hp.n_ff, dtype)}
        if dtype != torch.float32:       # f32 products are roped in place and are the cache's f32 V already
            widths.update({"qr": (nq, torch.float32), "kr": (nk, torch.float32), "vf": (nv, torch.float32)})
        with torch.inference_mode(False):
            alloc = torch.zeros if pages is None else torch.empty    # pages: zero-filled on its thread
            self.t = {name: alloc(rows, cols, dtype=dt) for name, (cols, dt) in widths.items()}
        if pages is not None:
            pages.zero(list(self.t.values()))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.t.values())

    def get(self, name: str, n: int) -> torch.Tensor:
        return self.t[name][:n]


def attach_buffers(scratch: Scratch, hp, n_ubatch: int, pages=None) -> None:
    """The ubatch buffers on the scratch, where NativeOps will run (the library has the ops and a ubatch
    is longer than the GEMV takes); pages: a load's PageWork, which zero-fills them."""
    from engine.ops import GEMV_MAX_ROWS
    if kernels.has_prefill_ops() and n_ubatch > GEMV_MAX_ROWS:
        scratch.ubatch = UbatchBuffers(hp, n_ubatch, scratch.batch_dtype, pages)


def layer_ops(x: torch.Tensor, w: dict, scratch: Scratch | None) -> "TorchOps":
    """NativeOps for a ubatch of x's rows through a layer's weights w where it runs (see the module's
    doc), else TorchOps."""
    bufs = getattr(scratch, "ubatch", None)
    n = x.shape[0]
    ws = [t for t in w.values() if not isinstance(t, torch.Tensor)]     # the matrices, not the norms
    if (bufs is not None and kernels.has_prefill_ops() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.is_contiguous() and n <= bufs.rows and batched_dtype(n, ws, scratch) == bufs.dtype):
        return NativeOps(bufs, n, scratch)
    return TorchOps(scratch)


class TorchOps:
    """The steps in torch (any device), each giving new tensors."""

    def __init__(self, scratch: Scratch | None):
        self.scratch = scratch

    def norm(self, x, w, eps):
        from engine.models.base import rms_norm
        return rms_norm(x, w, eps)

    def linear(self, h, w, slot: str):
        return linear(h, w, self.scratch)

    def linear_many(self, h, ws, slots):
        return linear_many(h, ws, self.scratch)

    def rope(self, t, heads: int, head_dim: int, rope, pos, slot: str, norm_w=None, eps: float = 0.0,
             scale: float = 1.0):
        """t [n, heads * head_dim] -> f32 [n, heads, head_dim]: [per-head RMSNorm * norm_w], RoPE, [* scale]."""
        from engine.models.base import rms_norm
        t = t.view(t.shape[0], heads, head_dim)
        if norm_w is not None:
            t = rms_norm(t, norm_w, eps)
        t = rope(t, pos)
        return t * scale if scale != 1.0 else t

    def as_f32(self, t, slot: str):
        return t

    def bias(self, t, b, slot: str):
        """The product t plus its bias b, in f32 (as llama.cpp adds it)."""
        return t.float() + b

    def attention_out(self, n: int):
        return None

    def residual(self, x, y, eps: float, w_post=None, w_next=None):
        """x + (rms_norm(y) * w_post if w_post else y), and rms_norm of that * w_next (None without)."""
        from engine.models.base import rms_norm
        x = x + (rms_norm(y, w_post, eps) if w_post is not None else y)
        return x, (rms_norm(x, w_next, eps) if w_next is not None else None)

    def glu(self, op: int, gate, up):
        from engine.models.base import geglu_into
        return geglu_into(gate, up) if op == GELU else F.silu(gate).mul_(up)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class NativeOps(TorchOps):
    """The steps as native passes over n rows, writing into the ubatch's buffers (x updated in place)."""

    def __init__(self, bufs: UbatchBuffers, n: int, scratch: Scratch):
        super().__init__(scratch)
        self.b, self.n, self.lib = bufs, n, kernels._lib
        self.kind = KIND[bufs.dtype]

    def norm(self, x, w, eps):
        h = self.b.get("h", self.n)
        self.lib.cellar_pf_rms_norm(self.n, x.shape[1], _ptr(x), x.stride(0), 0, _ptr(w), eps, _ptr(h), h.stride(0),
                                    self.kind)
        return h

    def linear(self, h, w, slot: str):
        return linear(h, w, self.scratch, self.b.get(slot, self.n))

    def linear_many(self, h, ws, slots):
        return linear_many(h, ws, self.scratch, [self.b.get(s, self.n) for s in slots])

    def rope(self, t, heads, head_dim, rope, pos, slot, norm_w=None, eps=0.0, scale=1.0):
        if slot + "r" in self.b.t:
            out = self.b.get(slot + "r", self.n)
        elif (t.dtype == torch.float32 and t.is_contiguous() and slot in self.b.t
              and t.data_ptr() == self.b.t[slot].data_ptr()):
            out = t      # f32 buffers: the product roped in place (each row is read whole before it is written)
        else:
            out = torch.empty(self.n, heads * head_dim, dtype=torch.float32)
        if out.shape[1] != heads * head_dim or t.shape[1] != heads * head_dim:
            raise ValueError(f"rope: {heads} x {head_dim} values per row, got {t.shape[1]} into {out.shape[1]}")
        cos, sin = rope.angles(pos)
        self.lib.cellar_pf_rope(self.n, heads, head_dim, rope.n_rot, int(rope.neox), _ptr(t), t.stride(0),
                                KIND[t.dtype], None if norm_w is None else _ptr(norm_w), eps, scale, _ptr(cos),
                                _ptr(sin), cos.stride(0), _ptr(out), out.stride(0))
        return out.view(self.n, heads, head_dim)

    def as_f32(self, t, slot: str):
        return t if t.dtype == torch.float32 else self.b.get(slot + "f", self.n).copy_(t)

    def bias(self, t, b, slot: str):
        """In place in an f32 product's buffer; a bf16 product goes to the f32 buffer rope() or the cache
        reads (q, k: "qr" / "kr"; v: "vf") and the bias is added there."""
        if t.dtype == torch.float32:
            return t.add_(b)
        side = self.b.get(slot + ("f" if slot == "v" else "r"), self.n)
        return side.copy_(t).add_(b)

    def attention_out(self, n: int):
        return self.b.get("a", n)

    def residual(self, x, y, eps, w_post=None, w_next=None):
        h = self.b.get("h", self.n) if w_next is not None else None
        self.lib.cellar_pf_residual(self.n, x.shape[1], _ptr(x), x.stride(0), _ptr(y), y.stride(0), KIND[y.dtype],
                                    None if w_post is None else _ptr(w_post),
                                    None if w_next is None else _ptr(w_next), eps,
                                    None if h is None else _ptr(h), 0 if h is None else h.stride(0), self.kind)
        return x, h

    def glu(self, op, gate, up):
        self.lib.cellar_pf_glu(op, self.n, gate.shape[1], _ptr(gate), gate.stride(0), KIND[gate.dtype], _ptr(up),
                               up.stride(0), KIND[up.dtype], _ptr(gate), gate.stride(0), KIND[gate.dtype])
        return gate
