"""Quantized kernels on GGUF blocks: GEMV for decode and dequantization for prefill.

Runs the native library (native/libcellar_kernels.so, through ctypes, which releases the GIL during
each call) when it is built; otherwise everything goes through torch (`quant.dequantize_torch` +
matmul). Environment: CELLAR_NO_NATIVE=1 forces the torch path; CELLAR_ISA=scalar|avx2|avx512 caps the
instruction set the library uses (it never goes above what the CPU has).
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from engine.quant import SUPPORTED, GGMLType, QTensor, dequantize_torch

LIB_NAME = "libcellar_kernels.so"   # built by native/build.py next to native/__init__.py
ISA_NAMES = ("scalar", "avx2", "avx512", "avx512-vnni")
_ABI_VERSION = 5

_lib = None
AVAILABLE = False
ISA = "none"
_threads = 1


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _load_library():
    if os.environ.get("CELLAR_NO_NATIVE", "") not in ("", "0"):
        return None
    path = Path(__file__).resolve().parent.parent / "native" / LIB_NAME
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    if lib.cellar_abi_version() != _ABI_VERSION:
        return None
    i64, i32, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.cellar_gemv.argtypes = [i32, vp, i64, i64, i64, vp, i32, i64, vp, i64]
    lib.cellar_dequant.argtypes = [i32, vp, i64, i64, i64, i64, vp, i64, i32, i32]
    lib.cellar_supports.argtypes = [i32, i64]
    lib.cellar_gemv_multi.argtypes = [i32, vp, vp, vp, vp, i64, vp, vp]
    for name in ("cellar_gemv", "cellar_gemv_multi", "cellar_dequant", "cellar_supports", "cellar_set_isa", "cellar_isa",
                 "cellar_isa_best", "cellar_set_threads", "cellar_threads"):
        getattr(lib, name).restype = i32
    if hasattr(lib, "cellar_gemm_multi"):     # prefill GEMM (native/src/gemm_run.c)
        lib.cellar_gemm_multi.argtypes = [i32, vp, vp, vp, vp, i64, vp, i32, i64, vp, vp]
        lib.cellar_gemm_multi.restype = i32
        lib.cellar_gemm_tiled.argtypes = [i32]
        lib.cellar_gemm_tiled.restype = i32
        lib.cellar_gemm_buffer_bytes.restype = i64
    if hasattr(lib, "cellar_qgemm_multi"):   # int8 prefill GEMM on unpacked panels (native/src/qgemm.c)
        lib.cellar_qgemm_multi.argtypes = [i32, vp, vp, vp, vp, i64, vp, i32, i32, i64, vp, vp, i32]
        lib.cellar_qgemm_multi.restype = i32
        lib.cellar_qgemm_supports.argtypes = [i32, i64, i64]
        lib.cellar_qgemm_supports.restype = i32
        lib.cellar_qgemm_buffer_bytes.restype = i64
    if hasattr(lib, "cellar_pool_rest"):     # the pool's idle workers to sleep now (native/src/pool.c)
        lib.cellar_pool_rest.argtypes = []
        lib.cellar_pool_rest.restype = None
    if hasattr(lib, "cellar_trig_f32"):      # RoPE tables' cosf / sinf (native/src/prefill_entry.c)
        lib.cellar_trig_f32.argtypes = [i64, vp, vp, vp]
        lib.cellar_trig_f32.restype = None
    _bind_prefill(lib)
    if hasattr(lib, "cellar_vocab_new"):     # the tokenizer's tables, BPE and SentencePiece merges
        lib.cellar_vocab_new.argtypes = [vp, vp, i64, vp, vp, i64, vp]     # (native/src/vocab.c, bpe.c, spm.c)
        lib.cellar_vocab_new.restype = vp
        lib.cellar_vocab_free.argtypes = [vp]
        lib.cellar_vocab_free.restype = None
        lib.cellar_vocab_token_id.argtypes = [vp, ctypes.c_char_p, i64]
        lib.cellar_vocab_token_id.restype = i32
        lib.cellar_vocab_set_spm.argtypes = [vp, vp, vp]
        lib.cellar_vocab_set_spm.restype = i32
        lib.cellar_bpe_encode.argtypes = [vp, ctypes.c_char_p, i64, i32, vp]
        lib.cellar_bpe_encode.restype = i64
        lib.cellar_spm_encode.argtypes = [vp, ctypes.c_char_p, i64, vp]
        lib.cellar_spm_encode.restype = i64
    return lib


def vocab_library():
    """The library, where it has the tokenizer's functions (engine/tokenizer/native.py); else None."""
    return _lib if _lib is not None and hasattr(_lib, "cellar_vocab_new") else None


def _bind_prefill(lib) -> None:
    """The prefill's small ops (native/src/prefill.c), where the library has them."""
    if not hasattr(lib, "cellar_pf_rms_norm"):
        return
    i64, i32, vp, f32 = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_float
    lib.cellar_pf_rms_norm.argtypes = [i64, i32, vp, i64, i32, vp, f32, vp, i64, i32]
    lib.cellar_pf_residual.argtypes = [i64, i32, vp, i64, vp, i64, i32, vp, vp, f32, vp, i64, i32]
    lib.cellar_pf_rope.argtypes = [i64, i32, i32, i32, i32, vp, i64, i32, vp, f32, f32, vp, vp, i64, vp, i64]
    lib.cellar_pf_glu.argtypes = [i32, i64, i32, vp, i64, i32, vp, i64, i32, vp, i64, i32]
    lib.cellar_pf_mask.argtypes = [i64, i64, i64, vp, i64, f32, vp, vp, i64, vp, vp, i64]
    lib.cellar_pf_round.argtypes = [i64, i64, vp, i64, i32]
    lib.cellar_pf_cell_range.argtypes = [i64, vp, vp, i64, i64, vp, vp, i64, vp, vp]
    for name in ("cellar_pf_rms_norm", "cellar_pf_residual", "cellar_pf_rope", "cellar_pf_glu", "cellar_pf_mask",
                 "cellar_pf_round", "cellar_pf_cell_range"):
        getattr(lib, name).restype = None


def pool_rest() -> None:
    """The native pool's idle workers sleep now rather than spin ~0.1 ms for a next job (for a caller
    whose next step runs on other threads)."""
    if _lib is not None and hasattr(_lib, "cellar_pool_rest"):
        _lib.cellar_pool_rest()


def trig_f32(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(cosf, sinf) of f32 angles from the C library, in one native pass; None without the library."""
    if _lib is None or not hasattr(_lib, "cellar_trig_f32"):
        return None
    a = np.ascontiguousarray(angles, dtype=np.float32)
    c, s = np.empty_like(a), np.empty_like(a)
    _lib.cellar_trig_f32(a.size, a.ctypes.data, c.ctypes.data, s.ctypes.data)
    return c, s


def best_isa() -> str:
    """The best instruction set this CPU runs with the library ("none" without it)."""
    return ISA_NAMES[_lib.cellar_isa_best()] if _lib else "none"


def set_isa(name: str) -> str:
    """Cap the instruction set (scalar|avx2|avx512|avx512-vnni); returns the one now in use."""
    global ISA
    if _lib is None:
        return ISA
    want = name.strip().lower()
    if want not in ISA_NAMES:
        raise ValueError(f"unknown instruction set {name!r}; choose one of {', '.join(ISA_NAMES)}")
    ISA = ISA_NAMES[_lib.cellar_set_isa(ISA_NAMES.index(want))]
    return ISA


def set_threads(n: int) -> int:
    """Use exactly n threads (the caller's included) from now on; returns n."""
    global _threads
    n = int(n)
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    if _lib is not None:
        n = _lib.cellar_set_threads(n)
    else:
        torch.set_num_threads(n)
    _threads = n
    return n


def get_threads() -> int:
    return _threads


# ---- argument checks -------------------------------------------------------------------------
def _weight_address(w: QTensor) -> int:
    data = w.data
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.uint8 or not data.is_contiguous() or data.device.type != "cpu":
            raise ValueError(f"{w.name}: raw blocks must be a contiguous uint8 CPU tensor")
        n, addr = data.numel(), data.data_ptr()
    else:
        if data.dtype != np.uint8 or not data.flags.c_contiguous:
            raise ValueError(f"{w.name}: raw blocks must be a contiguous uint8 array")
        n, addr = data.size, data.__array_interface__["data"][0]
    if n != w.nbytes:
        raise ValueError(f"{w.name}: {GGMLType(w.qtype).name} {list(w.shape)} needs {w.nbytes} bytes, has {n}")
    return addr


def _check_type(w: QTensor) -> None:
    if GGMLType(w.qtype) not in SUPPORTED:
        raise ValueError(f"{w.name}: tensor type {GGMLType(w.qtype).name} is not supported by the kernels")


def _check_f32_rows(t: torch.Tensor, what: str, cols: int) -> None:
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise TypeError(f"{what} must be a float32 CPU tensor, got {t.dtype} on {t.device}")
    if t.dim() not in (1, 2) or t.shape[-1] != cols:
        raise ValueError(f"{what} must be [{cols}] or [n, {cols}], got {list(t.shape)}")
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        raise ValueError(f"{what} rows must be contiguous (stride 1 along the last dimension)")


# ---- public kernels ---------------------------------------------------------------------------
def _native_args(w: QTensor) -> tuple[int, int, int, int, int]:
    """(type, address, row_bytes, rows, cols) of w, checked once and then kept on the weight: decode
    calls the GEMV ~200 times a token, and the checks cost more than a small GEMV."""
    key = (id(w.data), w.qtype, w.shape)
    got = w.__dict__.get("_native_args")
    if got is None or got[0] != key:
        _check_type(w)
        got = (key, (int(w.qtype), _weight_address(w), w.row_bytes, w.rows, w.cols), w.data)
        w.__dict__["_native_args"] = got
    return got[1]


def gemv(w: QTensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """out = x @ W.T for x f32 [cols] or [n, cols] (small n); out f32 [rows] or [n, rows]."""
    if (_lib is not None and out is None and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.is_contiguous() and 0 < x.dim() <= 2):
        qtype, addr, row_bytes, rows, cols = _native_args(w)
        if x.shape[-1] == cols:              # the fast path: everything below already checked
            n = 1 if x.dim() == 1 else x.shape[0]
            out = torch.empty((rows,) if x.dim() == 1 else (n, rows), dtype=torch.float32)
            if n and _lib.cellar_gemv(qtype, addr, row_bytes, rows, cols, x.data_ptr(), n, cols,
                                      out.data_ptr(), rows) != 0:
                raise RuntimeError(f"{w.name}: native gemv failed")
            return out
    _check_type(w)
    rows, cols = w.rows, w.cols
    _check_f32_rows(x, "x", cols)
    out_shape = (rows,) if x.dim() == 1 else (x.shape[0], rows)
    if out is None:
        out = torch.empty(out_shape, dtype=torch.float32)
    else:
        if tuple(out.shape) != out_shape:
            raise ValueError(f"out must be {list(out_shape)}, got {list(out.shape)}")
        _check_f32_rows(out, "out", rows)
    n = 1 if x.dim() == 1 else x.shape[0]
    if n == 0:
        return out
    if _lib is None:
        W = dequantize_torch(w.data, w.qtype, (rows, cols))
        out.copy_(x @ W.T)
        return out
    rc = _lib.cellar_gemv(int(w.qtype), _weight_address(w), w.row_bytes, rows, cols, x.data_ptr(), n,
                          x.stride(0) if x.dim() == 2 else cols, out.data_ptr(),
                          out.stride(0) if out.dim() == 2 else rows)
    if rc != 0:
        raise RuntimeError(f"{w.name}: native gemv failed ({'out of memory' if rc == -2 else 'bad shape'})")
    return out


class _Group:
    """ctypes argument arrays of one list of weights for cellar_gemv_multi, built once."""

    def __init__(self, ws: list[QTensor]):
        args = [_native_args(w) for w in ws]
        n = len(ws)
        self.n, self.cols = n, args[0][4]
        self.rows = [a[3] for a in args]
        self.total = sum(self.rows)
        self.types = (ctypes.c_int * n)(*[a[0] for a in args])
        self.addrs = (ctypes.c_void_p * n)(*[a[1] for a in args])
        self.row_bytes = (ctypes.c_int64 * n)(*[a[2] for a in args])
        self.rows_c = (ctypes.c_int64 * n)(*self.rows)
        self.outs_t = ctypes.c_void_p * n
        self.keys = [(id(w.data), w.qtype, w.shape) for w in ws]


MULTI_MAX = 8


def gemv_many(ws: list[QTensor], x: torch.Tensor) -> list[torch.Tensor]:
    """[x @ W.T for W in ws] for one row x (f32 [1, cols] or [cols]) in one native call: x prepared once
    and the rows of all the weights shared between the threads in one job (decode's Q, K, V; gate, up)."""
    if len({w.cols for w in ws}) > 1:        # on every path, the one-by-one fallback included
        raise ValueError("gemv_many: the weights must have the same number of columns")
    if (_lib is None or not 1 <= len(ws) <= MULTI_MAX or x.dtype != torch.float32 or x.device.type != "cpu"
            or not x.is_contiguous() or x.numel() != x.shape[-1] or x.dim() > 2):
        return [gemv(w, x) for w in ws]
    cache = ws[0].__dict__.setdefault("_gemv_groups", {})
    key = tuple(id(w) for w in ws)
    g = cache.get(key)
    if g is None or g.keys != [(id(w.data), w.qtype, w.shape) for w in ws]:
        g = cache[key] = _Group(ws)
    if x.shape[-1] != g.cols:
        raise ValueError(f"x must have {g.cols} columns, got {list(x.shape)}")
    buf = torch.empty(g.total, dtype=torch.float32)
    base, outs, off = buf.data_ptr(), [], 0
    ptrs = g.outs_t()                        # per call: two threads may run the same group
    for i, r in enumerate(g.rows):
        ptrs[i] = base + 4 * off
        o = buf[off:off + r]
        outs.append(o.view(1, r) if x.dim() == 2 else o)
        off += r
    rc = _lib.cellar_gemv_multi(g.n, g.types, g.addrs, g.row_bytes, g.rows_c, g.cols, x.data_ptr(), ptrs)
    if rc != 0:
        raise RuntimeError(f"{ws[0].name}: native gemv failed ({'out of memory' if rc == -2 else 'bad shape'})")
    return outs


# ---- prefill GEMM ------------------------------------------------------------------------------
_GEMM_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
                         GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K})


def has_gemm() -> bool:
    return _lib is not None and hasattr(_lib, "cellar_gemm_multi")


def gemm_supported(w: QTensor) -> bool:
    """Whether gemm() runs natively for w (a quantized type; float types take the matmul)."""
    return has_gemm() and GGMLType(w.qtype) in _GEMM_TYPES


def gemm_tiled(w: QTensor) -> bool:
    """Whether the path in use has a tile kernel for w's type (else the GEMM runs the GEMV's dot per
    pair: exact, but slower than dequantize + matmul)."""
    return gemm_supported(w) and bool(_lib.cellar_gemm_tiled(int(w.qtype)))


def has_prefill_ops() -> bool:
    """Whether the library has the prefill's native small ops (engine/prefill.py)."""
    return _lib is not None and hasattr(_lib, "cellar_pf_rms_norm")


def gemm_buffer_bytes() -> int:
    """Bytes of the calling thread's GEMM activation buffer (the largest ubatch's quantized x so far)."""
    return int(_lib.cellar_gemm_buffer_bytes()) if has_gemm() else 0


def gemm_many(ws: list[QTensor], x: torch.Tensor) -> list[torch.Tensor]:
    """[x @ W.T for W in ws] for a batch x f32 [n, cols] (prefill), on the raw blocks: x quantized once
    (as the GEMV does) and the tiles of all the weights shared between the threads in one job. Every
    output is bitwise what gemv() gives for that row of x."""
    if not has_gemm():
        raise RuntimeError("native GEMM not available")
    if not 1 <= len(ws) <= MULTI_MAX:
        raise ValueError(f"gemm_many takes 1..{MULTI_MAX} weights, got {len(ws)}")
    args = [_native_args(w) for w in ws]
    cols = args[0][4]
    if any(a[4] != cols for a in args):
        raise ValueError("gemm_many: the weights must have the same number of columns")
    for w in ws:
        if GGMLType(w.qtype) not in _GEMM_TYPES:
            raise ValueError(f"{w.name}: the GEMM takes quantized types, not {GGMLType(w.qtype).name}")
    _check_f32_rows(x, "x", cols)
    if x.dim() != 2:
        raise ValueError(f"x must be [n, {cols}], got {list(x.shape)}")
    n, k = x.shape[0], len(ws)
    outs = [torch.empty(n, a[3], dtype=torch.float32) for a in args]
    if n == 0:
        return outs
    rc = _lib.cellar_gemm_multi(
        k, (ctypes.c_int * k)(*[a[0] for a in args]), (ctypes.c_void_p * k)(*[a[1] for a in args]),
        (ctypes.c_int64 * k)(*[a[2] for a in args]), (ctypes.c_int64 * k)(*[a[3] for a in args]), cols,
        x.data_ptr(), n, x.stride(0), (ctypes.c_void_p * k)(*[o.data_ptr() for o in outs]),
        (ctypes.c_int64 * k)(*[a[3] for a in args]))
    if rc != 0:
        raise RuntimeError(f"{ws[0].name}: native gemm failed ({'out of memory' if rc == -2 else 'bad shape'})")
    return outs


def gemm(w: QTensor, x: torch.Tensor) -> torch.Tensor:
    """x @ W.T for a batch x f32 [n, cols] on the raw blocks; bitwise equal to gemv(w, x)."""
    return gemm_many([w], x)[0]


def qgemm_supported(w: QTensor) -> bool:
    """Whether the path in use has the int8 prefill GEMM (native/src/qgemm.c: AVX-512 VNNI, or AVX2 without
    Q8_0) for w's type and shape."""
    return (_lib is not None and hasattr(_lib, "cellar_qgemm_supports") and isinstance(w, QTensor)
            and bool(_lib.cellar_qgemm_supports(int(w.qtype), w.rows, w.cols)))


def qgemm_buffer_bytes() -> int:
    """Bytes of the calling thread's int8 GEMM buffers (the largest ubatch's quantized x, one panel)."""
    return int(_lib.cellar_qgemm_buffer_bytes()) if _lib is not None and hasattr(_lib, "cellar_qgemm_buffer_bytes") else 0


_QG_KIND = {torch.float32: 0, torch.bfloat16: 1}


def qgemm_many(ws: list[QTensor], x: torch.Tensor, outs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """[x @ W.T for W in ws] for a batch x [n, cols] (f32 or bf16) in int8 (native/src/qgemm.c): x quantized
    once in blocks of 32 as the GEMV's q8 (llama.cpp's q8_1), each weight's blocks unpacked exactly to
    bytes, a scale and an offset, the panels of all the weights shared between the threads in one job.
    Not bitwise the GEMV: its sums over blocks run in another order. outs: [n, rows] each, f32 or bf16,
    rows contiguous (prefill's buffers); else new f32 tensors."""
    if not 1 <= len(ws) <= MULTI_MAX:
        raise ValueError(f"qgemm_many takes 1..{MULTI_MAX} weights, got {len(ws)}")
    for w in ws:
        if not qgemm_supported(w):
            raise ValueError(f"{w.name}: the int8 GEMM does not take {GGMLType(w.qtype).name} {list(w.shape)} here")
    args = [_native_args(w) for w in ws]
    cols = args[0][4]
    if any(a[4] != cols for a in args):
        raise ValueError("qgemm_many: the weights must have the same number of columns")
    if x.dtype not in _QG_KIND or x.device.type != "cpu" or x.dim() != 2 or x.shape[1] != cols or x.stride(1) != 1:
        raise ValueError(f"x must be a CPU f32 or bf16 [n, {cols}] with contiguous rows, got {x.dtype} {list(x.shape)}")
    n, k = x.shape[0], len(ws)
    if outs is None:
        outs = [torch.empty(n, a[3], dtype=torch.float32) for a in args]
    kinds = {_QG_KIND.get(o.dtype) for o in outs}
    if len(kinds) != 1 or None in kinds:
        raise ValueError("qgemm_many: the outputs must all be f32 or all bf16")
    for o, a in zip(outs, args):
        if o.shape != (n, a[3]) or o.stride(1) != 1 or o.device.type != "cpu":
            raise ValueError(f"qgemm_many: an output must be [{n}, {a[3]}] with contiguous rows, got {list(o.shape)}")
    if n == 0:
        return outs
    rc = _lib.cellar_qgemm_multi(
        k, (ctypes.c_int * k)(*[a[0] for a in args]), (ctypes.c_void_p * k)(*[a[1] for a in args]),
        (ctypes.c_int64 * k)(*[a[2] for a in args]), (ctypes.c_int64 * k)(*[a[3] for a in args]), cols,
        x.data_ptr(), _QG_KIND[x.dtype], n, x.stride(0), (ctypes.c_void_p * k)(*[o.data_ptr() for o in outs]),
        (ctypes.c_int64 * k)(*[o.stride(0) for o in outs]), kinds.pop())
    if rc != 0:
        raise RuntimeError(f"{ws[0].name}: native int8 gemm failed ({'out of memory' if rc == -2 else 'bad shape'})")
    return outs


def dequantize_into(w: QTensor, out: torch.Tensor, row0: int = 0, row1: int | None = None, *,
                    alone: bool = False) -> torch.Tensor:
    """Rows [row0, row1) of w into out (bf16 or f32). out is [w.rows, cols] (rows land at row0..row1)
    or exactly [row1 - row0, cols] (rows land at 0..). Returns the filled rows of out. alone: on the
    calling thread only (for callers that split a matrix between threads themselves)."""
    _check_type(w)
    rows, cols = w.rows, w.cols
    row1 = rows if row1 is None else int(row1)
    row0 = int(row0)
    if not 0 <= row0 <= row1 <= rows:
        raise ValueError(f"{w.name}: row range [{row0}, {row1}) outside 0..{rows}")
    if out.dtype not in (torch.bfloat16, torch.float32) or out.device.type != "cpu":
        raise TypeError(f"out must be a bfloat16 or float32 CPU tensor, got {out.dtype} on {out.device}")
    if out.dim() != 2 or out.shape[1] != cols or (out.stride(1) != 1 and cols > 1):
        raise ValueError(f"out must be [rows, {cols}] with contiguous rows, got {list(out.shape)}")
    if out.shape[0] == rows:
        dst = out[row0:row1]
    elif out.shape[0] == row1 - row0:
        dst = out
    else:
        raise ValueError(f"out has {out.shape[0]} rows; need {rows} or {row1 - row0}")
    if row1 == row0:
        return dst
    if _lib is None:
        rb = w.row_bytes
        raw = w.data.reshape(-1)[row0 * rb:row1 * rb]
        dst.copy_(dequantize_torch(raw, w.qtype, (row1 - row0, cols), dst.dtype))
        return dst
    rc = _lib.cellar_dequant(int(w.qtype), _weight_address(w), w.row_bytes, row0, row1, cols,
                             dst.data_ptr(), dst.stride(0), int(dst.dtype == torch.bfloat16), int(alone))
    if rc != 0:
        raise RuntimeError(f"{w.name}: native dequantization failed")
    return dst


def _init() -> None:
    global _lib, AVAILABLE, ISA
    _lib = _load_library()
    AVAILABLE = _lib is not None
    if _lib is None:
        ISA = "none"
        return
    ISA = ISA_NAMES[_lib.cellar_isa()]
    want = os.environ.get("CELLAR_ISA", "").strip().lower()
    if want:
        if want not in ISA_NAMES:
            raise ValueError(f"CELLAR_ISA={want!r}: choose one of {', '.join(ISA_NAMES)}")
        if ISA_NAMES.index(want) < ISA_NAMES.index(ISA):   # lower only
            set_isa(want)
    set_threads(_default_threads())


_init()
