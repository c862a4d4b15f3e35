"""Linear algebra on weights kept in their GGUF block layout.

    scratch = Scratch.for_weights(weights)    # once, at load: one buffer for the widest matrix
    y = linear(x, w, scratch)                 # x f32 [n, cols] -> f32 [n, rows]
    e = get_rows(token_embd, ids)             # f32 [len(ids), cols]: only the looked-up rows

Few rows (decode) run the native GEMV on the raw blocks. A batch (prefill) takes one of:
- the int8 GEMM (native/src/qgemm.c) on a CPU without AMX: x quantized once per call in blocks of 32 as
  llama.cpp's q8_1, the weight's blocks unpacked exactly into 32-row panels of bytes by the thread that
  multiplies them (no dequantized copy, no scratch). With AVX-512 VNNI (Zen 4, Ice Lake) vpdpbusd at
  ~140-170 GMAC/s a core against the bf16 matmul's ~95 (2-core Zen 4); with AVX2 vpmaddubsw, the same
  bits at ~70-85 (Zen 4 running the AVX2 build; the f32 matmul there ~70, before dequantizing).
  Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K (and Q8_0 with VNNI) with rows a multiple of 32; the batched
  layer's buffers are then f32 (Scratch.batch_dtype).
- dequantize the weight into the reused scratch and matmul: with a bf16 scratch the whole weight
  dequantized on the native pool and one matmul (shared out in blocks of x's rows without AMX,
  BF16_SPLIT); with an f32 one in row chunks shared between threads (engine/split.py).
- with CELLAR_PREFILL=gemm, the native GEMM on the raw blocks where it has a tile kernel for the type (x
  quantized as the GEMV does; every output bitwise equal to the GEMV's, so prefill and decode compute
  alike).
The scratch is f32 unless the CPU has a bf16 matmul unit (AMX or AVX-512 BF16): without one, a bf16
matmul is 6-8x slower than f32, and the buffer is only a few MiB (the largest layer matrix).

CELLAR_PREFILL=auto (the default) takes the int8 GEMM where the CPU has it as above and dequantize +
matmul elsewhere (AMX, no AVX2); =i8 the int8 GEMM wherever the library has it (AMX machines too); =f32 dequantize +
matmul always; =gemm as above; =q8 sends every quantized type to the GEMV-exact GEMM (even where it only
has the dot per pair: exact, slower).
Why the GEMV-exact GEMM is not the default: on an AVX2 machine (Zen 3; n = 512, one thread,
tools/gemm_bench.py) it is 1.19-1.38x the matmul on Q4_K/Q5_K/Q6_K but 0.80-1.00x on Q4_0/Q4_1/Q5_0/
Q5_1/Q8_0 (a 32-value block costs maddubs + madd + an FMA per activation row, on the two pipes f32 FMAs
use), and it moves greedy near-ties past the tests' bounds (Gemma-3 bf16-KV 'long' at 0.35, f16 'chat' at
0.42). The int8 GEMM passes them: its outputs are not rounded to bf16, its k-quant activations take a
scale per 32 values (the GEMV's q8_K one per 256).
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Iterable

import numpy as np
import torch

from engine import cpu_features, kernels, split
from engine import gpu_kernels
from engine.pages import zeros
from engine.quant import GGMLType, QTensor, dequantize_torch

GEMV_MAX_ROWS = 8          # up to this many rows of x, the GEMV on raw blocks beats dequantize + matmul
MIN_CHUNK_ROWS = 64        # a matmul chunk of fewer weight rows runs below MKL's speed
MIN_X_ROWS = 16            # the fewest rows of x in one block of a bf16 matmul shared out (BF16_SPLIT)


PREFILL = cpu_features.prefill_mode()


def use_gemm(w) -> bool:
    """Whether a batch through w runs the native GEMV-exact GEMM (CELLAR_PREFILL=gemm / q8)."""
    if PREFILL not in ("gemm", "q8") or not isinstance(w, QTensor) or not kernels.gemm_supported(w):
        return False
    return PREFILL == "q8" or kernels.gemm_tiled(w)


def use_i8(w) -> bool:
    """Whether a batch through w runs the int8 GEMM (native/src/qgemm.c): by default on a CPU without AMX
    (cpu_features.int8_prefill), for the types and shapes the library's path in use takes."""
    return (isinstance(w, QTensor) and cpu_features.int8_prefill(mode=PREFILL)
            and kernels.qgemm_supported(w))


def _cpu_flags() -> frozenset[str]:
    return cpu_features.cpu_flags()


def scratch_dtype() -> torch.dtype:
    """engine.cpu_features.scratch_kind as a torch dtype: bf16 where the CPU has a bf16 matmul unit."""
    return torch.bfloat16 if cpu_features.scratch_kind(_cpu_flags()) == "bf16" else torch.float32


SCRATCH_DTYPE = scratch_dtype()


def _bf16_split() -> bool:
    """Whether a bf16 matmul is shared out in blocks of rows between the threads (engine/split.py) rather than
    run whole on the calling thread. AMX multiplies a layer's matrix in well under a millisecond on one
    core and the chunks' bookkeeping costs more than they save; AVX-512 BF16 alone (Zen 4, Cooper Lake)
    is compute-bound at ~200 GFLOP/s a core, and one thread left the other core idle through ~60% of a
    prefill. 2-core EPYC (AVX-512 BF16, no AMX), pp512, 2 threads (tools/speed_profile.py): SmolLM2
    547-573 -> 708-721 tok/s, Gemma-3 635 -> 782. CELLAR_BF16_SPLIT=0|1 overrides."""
    env = os.environ.get("CELLAR_BF16_SPLIT", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return "amx_bf16" not in _cpu_flags()


BF16_SPLIT = _bf16_split()


class Scratch:
    """One dequantization buffer, sized for the largest matrix it will hold, allocated (and touched)
    once; every batched linear reuses it."""

    def __init__(self, n_elements: int, dtype: torch.dtype | None = None, batch_dtype: torch.dtype | None = None,
                 pages=None):
        self.buf = zeros(pages, max(int(n_elements), 1), dtype=dtype or SCRATCH_DTYPE)
        self.ubatch = None           # engine.prefill.UbatchBuffers: the batched layer's activations
        # the type of the batched layer's activations: the scratch's, or f32 where the int8 GEMM runs (its
        # x rounded to bf16 and then to int8 moved a Gemma-3 greedy near-tie to a 0.47 gap, over the tests'
        # bound; f32 in and out keeps it within)
        self.batch_dtype = batch_dtype or self.buf.dtype

    @classmethod
    def for_weights(cls, weights: Iterable[QTensor], pages=None) -> "Scratch":
        """Sized for the largest matrix a batch dequantizes: those neither native GEMM takes (on both
        real models none beside the int8 GEMM, or with CELLAR_PREFILL=gemm: the buffer is then one
        element; the GEMMs' quantized x is their own buffer); batch_dtype f32 where any takes the int8 GEMM."""
        weights = list(weights)
        return cls(max((w.rows * w.cols for w in weights if not use_gemm(w) and not use_i8(w)), default=1),
                   batch_dtype=torch.float32 if any(use_i8(w) for w in weights) else None, pages=pages)

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size() + (self.ubatch.nbytes if self.ubatch is not None else 0)

    def view(self, w: QTensor) -> torch.Tensor:
        if self.buf.numel() < w.rows * w.cols:     # the path changed after load (CELLAR_PREFILL, tests)
            self.buf = torch.zeros(w.rows * w.cols, dtype=self.buf.dtype)
        return self.buf[: w.rows * w.cols].view(w.rows, w.cols)


def _chunks(rows: int, n_threads: int) -> list[tuple[int, int]]:
    step = max(MIN_CHUNK_ROWS, -(-rows // (4 * n_threads)))
    step = -(-step // 16) * 16
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def linear(x: torch.Tensor, w: QTensor, scratch: Scratch | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W.T for x f32 [n, cols]: GEMV on the blocks for small n, else dequantize + matmul. With out
    ([n, rows] in the scratch's type: engine/prefill.py's buffers) a dequantize + matmul writes its
    product there as the matmul gives it (bf16 from a bf16 scratch) and returns out; x may then be in
    the scratch's type already."""
    if gpu_kernels.runs_here(w):            # blocks on the offload device: x is there too
        return gpu_kernels.linear(x, w, q8=x.shape[0] <= GEMV_MAX_ROWS or scratch is None)
    if x.shape[0] <= GEMV_MAX_ROWS:
        return kernels.gemv(w, x.contiguous())
    if use_gemm(w):
        return kernels.gemm(w, x.contiguous())
    if use_i8(w):
        return kernels.qgemm_many([w], x.contiguous(), None if out is None else [out])[0]
    if scratch is None:
        return kernels.gemv(w, x.contiguous())
    W = scratch.view(w)
    xs = x.to(W.dtype).contiguous()
    if W.dtype == torch.bfloat16:
        # a bf16 matmul unit (AMX) multiplies a whole layer matrix in well under a millisecond (SmolLM2's
        # 512x576 by 576x1536: 0.7 ms on one core), so row chunks shared with a helper thread cost more
        # in bookkeeping than they save: the weight is dequantized on the native pool's threads, then one
        # matmul on this thread. 2-core Xeon, 2 threads, pp tok/s chunks -> this: SmolLM2 pp32 175 -> 287,
        # pp128 451 -> 709, pp512 687 -> 890; Gemma-3 pp32 210 -> 321, pp128 554 -> 756, pp512 930 -> 946.
        # Without AMX the matmul is shared out in blocks of x's rows (BF16_SPLIT)
        kernels.dequantize_into(w, W)
        n = x.shape[0]
        if BF16_SPLIT and kernels.get_threads() > 1 and n >= 2 * MIN_X_ROWS and (out is None or out.is_contiguous()):
            # the native pool's workers would spin ~0.1 ms for a next job while the split's threads start
            # the matmul: 2T - 1 runnable threads on T cores (tests/engine/test_threads.py); they sleep now
            kernels.pool_rest()
            # blocks of x's rows (tokens), each product straight into its rows of the output (contiguous:
            # no copy), every thread reading the whole weight (a few MiB, shared in L3). Blocks of the
            # weight's rows instead wrote each product into a strided slice through a copy: pp512 SmolLM2
            # 723 -> 773, Gemma-3 877 -> 922 tok/s (medians of 4 alternating runs, 2-core EPYC). Two blocks a
            # thread: Gemma-3's 512x640 by 640x2048 on 2 threads takes 3.39 / 3.51 / 3.86 ms in 2 / 4 / 8
            # blocks against 6.61 ms whole on one (pp512 medians 747 / 795 / 812 tok/s SmolLM2, 944 / ~1000 /
            # ~1030 Gemma-3 for 4 / 2 / 1 blocks a thread); two keep a late helper's share small
            conv = out is not None and out.dtype != W.dtype          # f32 buffers beside the int8 GEMM
            res = out if out is not None and not conv else torch.empty(n, w.rows, dtype=W.dtype)
            step = max(MIN_X_ROWS, -(-n // (2 * kernels.get_threads())))

            def mm(r0: int, r1: int) -> None:
                torch.mm(xs[r0:r1], W.T, out=res[r0:r1])

            split.run([lambda a=a: mm(a, min(a + step, n)) for a in range(0, n, step)])
            if conv:
                return out.copy_(res)
            return res if out is not None else res.float()
        if out is not None:
            return torch.mm(xs, W.T, out=out) if out.dtype == W.dtype else out.copy_(torch.mm(xs, W.T))
        return torch.mm(xs, W.T).float()
    if out is None or out.dtype != torch.float32:
        out = torch.empty(x.shape[0], w.rows, dtype=torch.float32)

    def part(r0: int, r1: int) -> None:
        # each chunk is dequantized and multiplied by the thread that takes it, while it is in cache
        Wc = kernels.dequantize_into(w, W, r0, r1, alone=True)
        out[:, r0:r1] = torch.mm(xs, Wc.T)

    split.run([lambda a=a, b=b: part(a, b) for a, b in _chunks(w.rows, kernels.get_threads())])
    return out


def linear_many(x: torch.Tensor, ws: list[QTensor], scratch: Scratch | None = None,
                outs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """[linear(x, w) for w in ws]; for one row of x (decode), or a batch all of whose weights take the
    GEMM, in one native call that prepares x once. outs: as linear's out, one per weight."""
    if x.shape[0] == 1 and all(isinstance(w, QTensor) for w in ws):
        return kernels.gemv_many(ws, x.contiguous())
    if (x.shape[0] > GEMV_MAX_ROWS and len(ws) <= kernels.MULTI_MAX and all(use_gemm(w) for w in ws)
            and len({w.cols for w in ws}) == 1):
        return kernels.gemm_many(ws, x.contiguous())
    if (x.shape[0] > GEMV_MAX_ROWS and len(ws) <= kernels.MULTI_MAX and all(use_i8(w) for w in ws)
            and len({w.cols for w in ws}) == 1):
        return kernels.qgemm_many(ws, x.contiguous(), outs)
    return [linear(x, w, scratch, None if outs is None else o) for w, o in zip(ws, outs or [None] * len(ws))]


def prefill_path(ws: Iterable[QTensor]) -> str:
    """What a batch through these weights runs on this CPU, for `cellar bench`: e.g. "int8 (avx512-vnni)",
    "bf16 matmul", or "int8 (avx2) 200, f32 matmul 9" where they differ (matrices per path)."""
    counts: dict[str, int] = {}
    for w in ws:
        if use_i8(w):
            path = f"int8 ({kernels.ISA})"
        elif use_gemm(w):
            path = f"gemv-exact gemm ({kernels.ISA})"
        else:
            path = "bf16 matmul" if SCRATCH_DTYPE == torch.bfloat16 else "f32 matmul"
        counts[path] = counts.get(path, 0) + 1
    if len(counts) <= 1:
        return next(iter(counts), "none")
    return ", ".join(f"{p} {n}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def batched_dtype(n: int, ws: Iterable[QTensor], scratch: Scratch | None) -> torch.dtype | None:
    """The type linear(x, w, scratch, out) takes and gives for n rows through every w in ws when each runs
    dequantize + matmul on this CPU (the scratch's type), else None (GEMV, GEMM, offload: f32 x)."""
    if scratch is None or n <= GEMV_MAX_ROWS:
        return None
    for w in ws:
        if not isinstance(w, QTensor) or use_gemm(w) or gpu_kernels.runs_here(w):
            return None
    return scratch.batch_dtype


def get_rows(w: QTensor, ids: torch.Tensor | list[int]) -> torch.Tensor:
    """Rows `ids` of w, dequantized to f32 [len(ids), cols]; the rest of the matrix is never touched."""
    idx = np.asarray(ids.tolist() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
    if len(idx) == 1 and kernels.AVAILABLE and w.qtype in kernels.SUPPORTED and 0 <= idx[0] < w.rows \
            and not (isinstance(w.data, torch.Tensor) and w.data.device.type != "cpu"):
        # one token (decode): the native dequantization of its row, the same products as below
        return kernels.dequantize_into(w, torch.empty(1, w.cols), int(idx[0]), int(idx[0]) + 1, alone=True)
    raw = w.data.reshape(w.rows, w.row_bytes)[idx]
    return dequantize_torch(raw.reshape(-1), w.qtype, (len(idx), w.cols))


def as_f32(w: QTensor) -> torch.Tensor:
    """A small tensor (a norm's weight) as a plain f32 torch tensor (copied out of the mapping)."""
    if GGMLType(w.qtype) == GGMLType.F32:
        return torch.from_numpy(np.frombuffer(w.data, dtype=np.float32).copy()).reshape(w.shape)
    return w.dequantize(torch.float32).reshape(w.shape).clone()


ATTEND_BLOCK = 128         # query rows per attention task at prefill
ATTEND_SCORES = ATTEND_BLOCK * 512     # query rows x cells per task: bounds the scores a task holds


def attend(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, mask, scale: float,
           cache_dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q K^T * scale + mask) V with grouped-query heads, as two batched matmuls per K/V head.

    q [n, heads, d], K [n_kv, heads_kv, d], V [n_kv, heads_kv, dv], mask f32 [n, n_kv] (0 or -inf), or a
    kv_cache.CellMask that makes it a block of rows at a time; query head h reads K/V head
    h // (heads / heads_kv). -> [n, heads * dv]. On the CPU this is 2-3x faster than
    scaled_dot_product_attention with a mask (and than its flash kernel with is_causal), at prefill and
    at decode alike: the queries sharing a K/V head become one matrix.

    A long ubatch, or one over many cells, runs in blocks of query rows (fewer the more cells there are),
    shared between threads (engine/split.py); each block reads only the cells between its rows' first and
    last visible ones (a causal prompt skips the upper triangle, a sliding window the cells behind it).

    cache_dtype (f16 or bf16: the cache's type) rounds as llama.cpp's attention without flash attention
    does: its matmuls convert the f32 operand to the cache's type, so q is rounded to it before q K^T and
    the softmax probabilities before their product with V (both products accumulate in f32).

    out: [n, heads * dv] to write the result into (any float type: engine/prefill.py's buffer in the
    output projection's input type), returned."""
    n, n_kv = q.shape[0], K.shape[0]
    if q.device.type == "cpu" and hasattr(mask, "cell_pos") and kernels.has_prefill_ops():
        return _attend_cells(q, K, V, _Cells(mask), scale, cache_dtype, out)
    if q.device.type != "cpu" or (n <= ATTEND_BLOCK and n * n_kv <= ATTEND_SCORES):
        o = _attend(q, K, V, mask.full() if hasattr(mask, "block") else mask, scale, cache_dtype)
        return o if out is None else out.copy_(o)
    if not hasattr(mask, "block"):
        mask = _DenseMask(mask)
    if out is None:
        out = torch.empty(n, q.shape[1] * V.shape[2], dtype=q.dtype)

    def block(r0: int, r1: int) -> None:
        c0, c1, m = mask.block(r0, r1)
        out[r0:r1] = _attend(q[r0:r1], K[c0:c1], V[c0:c1], m, scale, cache_dtype)

    # fewer rows per task as the cells grow, so a task's scores (and its mask) stay the size they have at
    # 512 cells whatever the context: the peak RSS of a prompt at a full context stays that of the load
    rows = max(1, min(ATTEND_BLOCK, ATTEND_SCORES // max(n_kv, 1)))
    split.run([lambda a=r0, b=min(r0 + rows, n): block(a, b) for r0 in reversed(range(0, n, rows))])  # as _attend_cells
    return out


class _DenseMask:
    """A whole f32 mask tensor, served a block of rows at a time as CellMask.block does."""

    def __init__(self, m: torch.Tensor):
        self.m = m

    def block(self, r0: int, r1: int) -> tuple[int, int, torch.Tensor]:
        m = self.m[r0:r1]
        seen = torch.nonzero((m == 0).any(0)).flatten()
        c0, c1 = (int(seen[0]), int(seen[-1]) + 1) if len(seen) else (0, 0)
        return c0, c1, m[:, c0:c1]


def _attend(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, mask: torch.Tensor, scale: float,
            cache_dtype: torch.dtype | None = None) -> torch.Tensor:
    n, heads, d = q.shape
    n_kv, heads_kv, dv = V.shape
    g = heads // heads_kv
    qg = q.view(n, heads_kv, g, d).permute(1, 2, 0, 3).reshape(heads_kv, g * n, d)
    if cache_dtype is not None:
        qg = qg.to(cache_dtype).float()
    s = torch.bmm(qg, K.permute(1, 2, 0))
    if scale != 1.0:
        s.mul_(scale)
    s = s.view(heads_kv, g, n, n_kv).add_(mask).softmax(-1).view(heads_kv, g * n, n_kv)
    if cache_dtype is not None:
        s = s.to(cache_dtype).float()
    o = torch.bmm(s, V.transpose(0, 1))                         # [heads_kv, g*n, dv]
    return o.view(heads_kv, g, n, dv).permute(2, 0, 1, 3).reshape(n, heads * dv)


# ---- attention with the native mask and rounding (native/src/softmax.c) ------------------------------
ROUNDS = {None: 0, torch.float16: 1, torch.bfloat16: 2}


class _Cells:
    """A kv_cache.CellMask's arrays as the native softmax reads them (kept alive while it runs)."""

    def __init__(self, m):
        self.qpos = np.ascontiguousarray(m.pos, dtype=np.int64)
        self.qbits = None if isinstance(m.bits, int) else np.ascontiguousarray(m.bits, dtype=np.int64)
        self.bits = m.bits if isinstance(m.bits, int) else 0
        self.cpos = np.ascontiguousarray(m.cell_pos, dtype=np.int64)
        self.cseq = np.ascontiguousarray(m.cell_seq, dtype=np.int64)
        self.window, self.n_kv = int(m.window), int(m.n_kv)

    def q_at(self, r0: int) -> tuple[int, int | None]:
        """Addresses of query row r0's position and sequence bits (None: one bits value for all)."""
        return (self.qpos.ctypes.data + 8 * r0,
                None if self.qbits is None else self.qbits.ctypes.data + 8 * r0)

    def range(self, r0: int, r1: int) -> tuple[int, int]:
        """The cells [c0, c1) any of query rows r0..r1 may see."""
        c0, c1 = ctypes.c_int64(), ctypes.c_int64()
        qp, qb = self.q_at(r0)
        kernels._lib.cellar_pf_cell_range(r1 - r0, qp, qb, self.bits, self.n_kv, self.cpos.ctypes.data,
                                          self.cseq.ctypes.data, self.window, ctypes.byref(c0), ctypes.byref(c1))
        return c0.value, c1.value


def _attend_cells(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, cells: _Cells, scale: float,
                  cache_dtype: torch.dtype | None, out: torch.Tensor | None) -> torch.Tensor:
    """attend() over a CellMask: blocks of query rows as there, each block's scale and mask in one native
    pass over its scores (no f32 mask is made: it comes from the cells' positions and sequences), torch's
    softmax in place, the probabilities rounded to the cache's type natively, and each block's query too as
    its thread copies it in (no rounded copy of the whole query first): the same bits as _attend with the
    block's f32 mask."""
    n, n_kv = q.shape[0], K.shape[0]
    if out is None:
        out = torch.empty(n, q.shape[1] * V.shape[2], dtype=q.dtype)
    rnd = ROUNDS[cache_dtype]

    def block(r0: int, r1: int) -> None:
        c0, c1 = cells.range(r0, r1)
        if c1 == c0:
            out[r0:r1] = 0
            return
        _attend_block(q[r0:r1], K[c0:c1], V[c0:c1], cells, r0, c0, scale, rnd, out[r0:r1])

    rows = max(1, min(ATTEND_BLOCK, ATTEND_SCORES // max(n_kv, 1)))
    if n <= rows:
        block(0, n)
    else:
        # the last rows first: under a causal mask a block's cost grows with its rows' positions, and the
        # longest tasks taken first leave the threads' shares even (blocks 4, 3 | 2, 1 rather than 1, 3 | 2, 4)
        split.run([lambda a=r0, b=min(r0 + rows, n): block(a, b) for r0 in reversed(range(0, n, rows))])
    return out


_WORK = threading.local()      # per thread: the attention block's buffers (see _block_work)


def _block_work(heads: int, heads_kv: int, d: int, dv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This thread's buffers for one block's query, scores and output at their largest (a block's rows x
    cells never exceed ATTEND_SCORES, its rows ATTEND_BLOCK; the scores are one K/V head's at a time):
    made and touched on first use (the load's warmup) and reused, so the blocks' varying shapes leave the
    allocator no freed blocks to keep."""
    key = (heads, heads_kv, d, dv)
    w = getattr(_WORK, "bufs", None)
    if w is None or w[0] != key:
        with torch.inference_mode(False):   # usable in place whether or not a later call is in inference mode
            w = _WORK.bufs = (key, torch.zeros(heads * ATTEND_BLOCK * d),
                              torch.zeros(heads // heads_kv * ATTEND_SCORES), torch.zeros(heads * ATTEND_BLOCK * dv))
    return w[1:]


def _attend_block(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, cells: _Cells, r0: int, c0: int,
                  scale: float, rnd: int, out: torch.Tensor) -> None:
    n, heads, d = q.shape
    n_kv, heads_kv, dv = V.shape
    g = heads // heads_kv
    qb, sb, ob = _block_work(heads, heads_kv, d, dv)
    if n > ATTEND_BLOCK or n * n_kv > ATTEND_SCORES:             # not a block attend() makes
        qb, sb, ob = (torch.empty(heads * n * d), torch.empty(g * n * n_kv), torch.empty(heads * n * dv))
    qg = qb[:heads * n * d].view(heads_kv, g, n, d)
    qg.copy_(q.view(n, heads_kv, g, d).permute(1, 2, 0, 3))
    qg = qg.view(heads_kv, g * n, d)
    lib, rows = kernels._lib, g * n
    if rnd:                                   # q to the cache's type, as .to(f16 / bf16).float() does
        lib.cellar_pf_round(heads * n, d, qg.data_ptr(), d, rnd)
    Kt, Vt = K.permute(1, 2, 0), V.transpose(0, 1)
    o = ob[:heads * n * dv].view(heads_kv, g * n, dv)
    s = sb[:g * n * n_kv].view(1, g * n, n_kv)
    qp, qbits = cells.q_at(r0)                                    # row j of s: query j % n
    # one K/V head at a time (each a batch of one: the same products as one batched matmul over all of
    # them), so the scores held are one head's: SmolLM2's 3 K/V heads, 1.6 MiB less a thread
    for h in range(heads_kv):
        torch.bmm(qg[h:h + 1], Kt[h:h + 1], out=s)
        lib.cellar_pf_mask(rows, n, n_kv, s.data_ptr(), s.stride(1), scale, qp, qbits, cells.bits,
                           cells.cpos.ctypes.data + 8 * c0, cells.cseq.ctypes.data + 8 * c0, cells.window)
        torch.softmax(s, -1, out=s)
        if rnd:
            lib.cellar_pf_round(rows, n_kv, s.data_ptr(), s.stride(1), rnd)
        torch.bmm(s, Vt[h:h + 1], out=o[h:h + 1])
    out.view(n, heads_kv, g, dv).copy_(o.view(heads_kv, g, n, dv).permute(2, 0, 1, 3))
