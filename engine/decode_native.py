"""Decode (one token) through a whole decoder layer in one native call (native/src/decode.c).

    dec = attach(net, kv)                       # at make_kv: every layer's description, built once
    y = layer(net, il, x, w, step, kv)          # in block(): x [1, n_embd] updated in place, or None

The description of a layer holds its weights (GGUF blocks, as the GEMV kernels take them), its norm
vectors, its K/V rows in the cache and the hyperparameters; a step passes only the cell its K/V go to,
the cells to read (the step's mask row), and the RoPE cos/sin row of its position. A step of several
sequences with one token each (Model.eval_batch while every slot decodes) runs the same call once per
row over that sequence's own cells in position order (Step.groups), so a reply's numbers are the same
alone or in any batch. `layer` returns None where the native path does not apply (a prompt's several
tokens, offload, no library, a cache or position it was not built for); the caller then runs its torch
path. CELLAR_NATIVE_DECODE=0
turns it off (tests compare the two paths).
"""
from __future__ import annotations

import ctypes
import math
import os
import weakref

import torch

from engine import kernels
from engine.quant import QTensor

i32, i64, f32, vp = ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
DEC_GEMMA, DEC_NEOX, DEC_F32_ATTN, DEC_QKNORM = 1, 2, 4, 8
KV_CODES = {"f16": 0, "bf16": 1, "q8_0": 2}
MATS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORMS = ("attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")
BIASES = ("attn_q.bias", "attn_k.bias", "attn_v.bias")


class DMat(ctypes.Structure):
    _fields_ = [("w", vp), ("row_bytes", i64), ("rows", i64), ("type", i32), ("pad", i32)]


class DLayer(ctypes.Structure):             # native/src/decode.h: dlayer
    _fields_ = ([(n, i32) for n in ("n_embd", "n_head", "n_head_kv", "head_dim", "head_dim_v", "n_ff", "n_rot",
                                     "flags", "kv_type")]
                + [("eps", f32), ("q_scale", f32), ("kq_scale", f32)]
                + [(n, DMat) for n in ("wq", "wk", "wv", "wo", "wgate", "wup", "wdown")]
                + [(n, vp) for n in ("attn_norm", "ffn_norm", "q_norm", "k_norm", "post_attn_norm", "post_ffw_norm")]
                + [("k_cache", vp), ("v_cache", vp), ("k_row_bytes", i64), ("v_row_bytes", i64), ("n_cells", i64),
                   ("work", vp), ("work_bytes", i64)]
                + [(n, vp) for n in ("bq", "bk", "bv")])


class DStep(ctypes.Structure):              # native/src/decode.h: dstep
    _fields_ = [("cell", i64), ("n_kv", i64), ("mask", vp), ("cos", vp), ("sin", vp), ("cells", vp)]


def _lib():
    lib = kernels._lib
    if lib is None or not hasattr(lib, "cellar_decode_layer"):
        return None
    if getattr(lib, "_decode_typed", False) is False:
        lib.cellar_decode_layer.argtypes = [vp, vp, vp]
        lib.cellar_decode_layer.restype = i32
        lib.cellar_decode_check.argtypes = [vp]
        lib.cellar_decode_check.restype = i32
        lib.cellar_decode_work_bytes.argtypes = [vp]
        lib.cellar_decode_work_bytes.restype = i64
        if hasattr(lib, "cellar_decode_layers"):
            lib.cellar_decode_layers.argtypes = [i32, vp, vp, vp]
            lib.cellar_decode_layers.restype = i32
        if hasattr(lib, "cellar_set_decode_many_cells"):
            lib.cellar_set_decode_many_cells.argtypes = [i32]
            lib.cellar_set_decode_many_cells.restype = i32
        lib._decode_typed = True
    return lib


def set_many_cells(n: int) -> int:
    """Visible cells from which the decode attention runs in three passes, K/V rows read once for all the
    query heads that share them (native/src/decode.c); 0 (the default): chosen per layer. The same bits
    as one pass per query head, which a huge n keeps (tests). Returns the value before."""
    lib = _lib()
    if lib is None or not hasattr(lib, "cellar_set_decode_many_cells"):
        raise RuntimeError("the native library is not built, or older than this engine: run `make setup`")
    return lib.cellar_set_decode_many_cells(int(n))


def enabled() -> bool:
    return os.environ.get("CELLAR_NATIVE_DECODE", "1") != "0" and _lib() is not None


def _flags(net) -> int | None:
    """The layer shape of an architecture this path knows (the block it replaces), or None."""
    from engine.models.gemma3 import Gemma3
    from engine.models.llama import Llama
    if type(net).block is Llama.block:
        return (DEC_NEOX if net.hp.rope_neox else 0) | (DEC_QKNORM if net.qk_norm else 0)
    if type(net).block is Gemma3.block:
        return DEC_GEMMA | (DEC_NEOX if net.hp.rope_neox else 0)
    return None


class NativeDecode:
    """Descriptions of a model's layers against one KV memory, and a work buffer, built once."""

    def __init__(self, net, kv):
        lib = _lib()
        hp = net.hp
        self.kv = kv
        self.layers: list[DLayer | None] = []
        self._keep: list = []                              # what the descriptions point into
        self._kt: list = []                                # the K/V tensors each description holds
        flags = _flags(net)
        gemma = flags is not None and flags & DEC_GEMMA
        descs = []
        for il in range(hp.n_layer):
            cache = kv.cache_of(il)
            w = net.layers[il]
            L = DLayer(n_embd=hp.n_embd, n_head=hp.n_head, n_head_kv=hp.n_head_kv, head_dim=hp.head_dim,
                       head_dim_v=hp.head_dim_v, n_ff=hp.n_ff, n_rot=hp.n_rot, flags=flags or 0,
                       kv_type=KV_CODES.get(cache.kv_type, -1), eps=hp.eps,
                       q_scale=hp.q_scale if gemma else 1.0,
                       kq_scale=1.0 if gemma else 1.0 / math.sqrt(hp.head_dim), n_cells=cache.n_cells)
            ok = flags is not None and all(isinstance(w.get(n), QTensor) for n in MATS)
            if ok:
                for field, name in zip(("wq", "wk", "wv", "wo", "wgate", "wup", "wdown"), MATS):
                    qtype, addr, row_bytes, rows, _cols = kernels._native_args(w[name])
                    setattr(L, field, DMat(addr, row_bytes, rows, qtype, 0))
                for field, name in zip(("attn_norm", "ffn_norm", "q_norm", "k_norm", "post_attn_norm",
                                        "post_ffw_norm", "bq", "bk", "bv"), NORMS + BIASES):
                    t = w.get(name)
                    if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.is_contiguous() \
                            and t.device.type == "cpu":
                        setattr(L, field, t.data_ptr())
                        self._keep.append(t)
                # a bias the native layer could not take would be left out: that layer stays in Python
                biased = not any(name in w and not getattr(L, field) for field, name in zip(("bq", "bk", "bv"), BIASES))
                K, V = cache.k[il], cache.v[il]
                ok = biased and K.device.type == "cpu" and V.device.type == "cpu" and K.is_contiguous() \
                    and V.is_contiguous()
                if ok:
                    L.k_cache, L.v_cache = K.data_ptr(), V.data_ptr()
                    L.k_row_bytes, L.v_row_bytes = K.stride(0) * K.element_size(), V.stride(0) * V.element_size()
            descs.append(L if ok else None)
            self._kt.append((cache.k[il], cache.v[il]) if ok else None)
        need = max((lib.cellar_decode_work_bytes(ctypes.byref(L)) for L in descs if L is not None), default=0)
        # allocated (and touched) now, shared by the layers: nothing is allocated while decoding
        self.work = torch.zeros(need + 64, dtype=torch.uint8)
        base = (self.work.data_ptr() + 63) // 64 * 64
        for L in descs:
            if L is not None:
                L.work, L.work_bytes = base, need
                if lib.cellar_decode_check(ctypes.byref(L)) != 0:
                    L = None
            self.layers.append(L)
        self._refs = [ctypes.byref(L) if L is not None else None for L in self.layers]
        self._step = None
        self._steps: dict = {}
        # every layer in one native call (all_layers): the descriptions' addresses, and a step's per layer
        self._all = all(L is not None for L in self.layers) and hasattr(lib, "cellar_decode_layers")
        n = len(self.layers)
        self._layer_ptrs = (vp * n)(*[ctypes.addressof(L) for L in self.layers]) if self._all else None
        self._step_ptrs = (vp * n)()

    def f32_attention(self, on: bool) -> None:
        """on: no rounding at all, for tests that measure what llama.cpp's rounding moves: attention without
        the f16/bf16 rounding of the query and the probabilities (a q8_0 K read as f32 against an f32
        query, not a q8_0 one), GELU by its formula rather than ggml's f16 table. off (the default): the
        rounding llama.cpp does, which the torch path does too."""
        for L in self.layers:
            if L is not None:
                L.flags = (L.flags | DEC_F32_ATTN) if on else (L.flags & ~DEC_F32_ATTN)

    def step_args(self, step, cache, rope):
        """The DStep of this step for a cache and a RoPE table (shared by the layers that use both)."""
        if step is not self._step:
            self._step, self._steps = step, {}
        key = (cache.name, id(rope))
        got = self._steps.get(key)
        if got is None:
            cs = _rope_row(rope, int(step.pos[0]))
            if cs is None:
                got = False
            else:
                mask = step.masks[cache.name]
                st = DStep(int(step.slots[cache.name][0]), int(step.n_kv[cache.name]), mask.data_ptr(), *cs)
                got = (st, ctypes.byref(st), mask)
            self._steps[key] = got
        return got


def _rope_row(rope, pos: int) -> tuple[int, int] | None:
    """Addresses of the RoPE table's cos and sin rows at pos, or None where the native layer cannot read
    them (a position past the table, a table not f32 / contiguous / on the CPU)."""
    cos, sin = rope.cos, rope.sin
    if not 0 <= pos < cos.shape[0] or cos.dtype != torch.float32 or not cos.is_contiguous() \
            or not sin.is_contiguous() or cos.device.type != "cpu":
        return None
    row = cos.shape[1] * 4
    return cos.data_ptr() + pos * row, sin.data_ptr() + pos * row


_decoders: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def attach(net, kv) -> NativeDecode | None:
    """Build (at load) the native decode of net against kv; None where it cannot run."""
    if not enabled() or _flags(net) is None:
        return None
    per_net = _decoders.setdefault(net, weakref.WeakKeyDictionary())
    dec = per_net.get(kv)
    if dec is None:
        dec = per_net[kv] = NativeDecode(net, kv)
    return dec


def _group_args(step, cache, rope, r: int):
    """The DStep of row r of a step of one-token sequences (Step.groups): its own cells and mask."""
    g = step.groups[cache.name][r]
    if g[0] != r or g[1] != r + 1:
        return False
    cs = _rope_row(rope, int(step.pos[r]))
    cells, mask = g[2], g[3]
    if cs is None or cells.dtype != torch.int64 or not cells.is_contiguous() or mask.dtype != torch.float32 \
            or not mask.is_contiguous() or mask.numel() != cells.numel():
        return False
    st = DStep(int(step.slots[cache.name][r]), int(cells.numel()), mask.data_ptr(), *cs, cells.data_ptr())
    return st, ctypes.byref(st), (cells, mask)


def all_layers(net, x: torch.Tensor, step, kv, weights) -> torch.Tensor | None:
    """Every layer on the one token of step in one native call, in place on x [1, n_embd]; None where
    that does not apply (then the caller runs layer by layer, each through `layer` or its torch path).
    weights(il) gives the weights the step runs layer il with (the host's own for the native path)."""
    if len(step.ids) != 1 or step.placed is not None or step.groups is not None:
        return None
    per_net = _decoders.get(net)
    dec = per_net.get(kv) if per_net is not None else None
    if dec is None or not dec._all or os.environ.get("CELLAR_NATIVE_DECODE", "1") == "0":
        return None
    if x.dtype != torch.float32 or not x.is_contiguous() or x.device.type != "cpu" or x.numel() != net.hp.n_embd:
        return None
    ptrs = dec._step_ptrs
    for il in range(len(dec.layers)):
        cache = kv.cache_of(il)
        kt = dec._kt[il]
        if weights(il) is not net.layers[il] or cache.k[il] is not kt[0] or cache.v[il] is not kt[1]:
            return None
        st = dec.step_args(step, cache, net.rope_of(il))
        if st is False:
            return None
        ptrs[il] = ctypes.addressof(st[0])
    r = kernels._lib.cellar_decode_layers(len(dec.layers), dec._layer_ptrs, ptrs, x.data_ptr())
    if r != 0:
        st = dec.step_args(step, kv.cache_of(-r - 1), net.rope_of(-r - 1))[0]
        raise RuntimeError(f"layer {-r - 1}: native decode failed (cell {st.cell}, {st.n_kv} cells)")
    return x


def layer(net, il: int, x: torch.Tensor, w: dict, step, kv) -> torch.Tensor | None:
    """Layer il on the one token of step, in place on x [1, n_embd], or on each row of x [n, n_embd]
    where step holds n sequences of one token each; None where the native path does not apply (the
    caller runs its own)."""
    n = len(step.ids)
    if step.placed is not None or (n != 1 and step.groups is None):
        return None
    if step.groups is not None and any(len(gs) != n for gs in step.groups.values()):
        return None                                        # a sequence with several tokens: torch
    per_net = _decoders.get(net)
    dec = per_net.get(kv) if per_net is not None else None
    if dec is None:
        dec = attach(net, kv)
        if dec is None:
            return None
    L = dec.layers[il]
    if L is None or w is not net.layers[il] or os.environ.get("CELLAR_NATIVE_DECODE", "1") == "0":
        return None
    cache = kv.cache_of(il)
    kt = dec._kt[il]
    if cache.k[il] is not kt[0] or cache.v[il] is not kt[1]:
        return None                                        # the cache's rows were replaced or moved
    if x.dtype != torch.float32 or not x.is_contiguous() or x.device.type != "cpu" or x.numel() != n * L.n_embd:
        return None
    if step.groups is not None:
        rope = net.rope_of(il)
        args = [_group_args(step, cache, rope, r) for r in range(n)]
        if any(a is False for a in args):
            return None
        row_bytes = L.n_embd * 4
        for r, st in enumerate(args):
            if kernels._lib.cellar_decode_layer(dec._refs[il], st[1], x.data_ptr() + r * row_bytes) != 0:
                raise RuntimeError(f"layer {il}, row {r}: native decode failed (cell {st[0].cell}, "
                                   f"{st[0].n_kv} cells)")
        return x
    st = dec.step_args(step, cache, net.rope_of(il))
    if st is False:
        return None
    if kernels._lib.cellar_decode_layer(dec._refs[il], st[1], x.data_ptr()) != 0:
        raise RuntimeError(f"layer {il}: native decode failed (cell {st[0].cell}, {st[0].n_kv} cells)")
    return x
