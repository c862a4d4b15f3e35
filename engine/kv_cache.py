"""The KV cache: cells, sequences and sliding windows, as llama.cpp keeps them.

    kv = KVMemory([KVCache("global", [5, 11], n_cells=4096, k_width=256, v_width=256),
                   KVCache("swa", [0, 1, 2, 3, 4, ...], n_cells=1024, ..., swa_window=512)])
    slots = kv.find_slot(pos, seq_id)         # per cache: cells for a ubatch (None when full)
    slots = kv.find_slot(pos, seq_ids)        # a mixed ubatch: seq_ids[i] is token i's sequence
    kv.cache_of(il).write(il, slots[ci], k, v); k, v = cache.read(il, n_kv); mask = cache.mask(...)
    kv.seq_rm(0, 100, -1); kv.seq_add(0, 50, 100, -25); kv.apply_shift(rope_shift)

A cache is an array of cells; each cell holds one token position and the set of sequences (a
bitmask) that share it. Layers sharing a cache share its cells; each layer has its own K and V rows
(`n_cells x width`, in f16, bf16, or q8_0 blocks of 34 bytes per 32 values). A sliding-window cache
reuses a cell once it has left the window of its sequence's next position (llama.cpp's find_slot),
so it needs only window + ubatch cells. seq_add moves positions and records how far each cell moved;
apply_shift re-rotates those cells' K (RoPE is additive in the position) before the next compute.
Attention reads only cells [0, n_kv), the range in use.
"""
from __future__ import annotations

import copy

from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from engine.quant import GGMLType, dequantize_torch

if TYPE_CHECKING:
    from engine.pages import PageWork

KV_TYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "q8_0": torch.uint8}
Q8_BLOCK, Q8_BYTES = 32, 34
MAX_SEQ = 63                     # sequence ids are bits of an int64 mask

RopeShift = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]   # (layer, K f32 [m, width], delta [m])


def row_width(kv_type: str, width: int) -> int:
    """Elements (bytes for q8_0) a K or V row takes in the cache."""
    if kv_type == "q8_0":
        if width % Q8_BLOCK:
            raise ValueError(f"q8_0 KV needs a row width divisible by {Q8_BLOCK}, got {width}")
        return width // Q8_BLOCK * Q8_BYTES
    return width


def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    """f32 [n, width] -> uint8 [n, width/32*34] ggml q8_0 blocks (f16 scale, 32 int8)."""
    n, width = x.shape
    b = x.reshape(n, width // Q8_BLOCK, Q8_BLOCK).float()
    d = b.abs().amax(-1, keepdim=True) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    v = b * inv
    q = (torch.sign(v) * torch.floor(v.abs() + 0.5)).to(torch.int8)         # roundf: half away from zero
    scale = d.to(torch.float16).view(torch.uint8).reshape(n, -1, 2)
    return torch.cat([scale, q.view(torch.uint8)], -1).reshape(n, -1)


def _bit(seq_id: int) -> int:
    if not 0 <= seq_id <= MAX_SEQ - 1:
        raise ValueError(f"sequence id {seq_id} out of range 0..{MAX_SEQ - 1}")
    return 1 << seq_id


def _bits(seq_id) -> int | np.ndarray:
    """The mask bit of one sequence id (int), or of each token's sequence (int64 array)."""
    if isinstance(seq_id, (int, np.integer)):
        return _bit(int(seq_id))
    ids = np.asarray(seq_id, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEQ - 1):
        raise ValueError(f"sequence ids {ids.min()}..{ids.max()} out of range 0..{MAX_SEQ - 1}")
    return np.left_shift(np.int64(1), ids)


class CellMask:
    """Which of a cache's cells [0, n_kv) each query of a ubatch may see: its own sequence's cells, not in
    its future, inside the window on a sliding cache. Kept as the cells' positions and sequence bits, so
    the f32 mask (0 or -inf) is made a block of query rows at a time (`block`: memory bounded by the
    block, not by n_kv x the ubatch) or whole (`full`, for one token or a short ubatch)."""

    def __init__(self, cache: "KVCache", pos: np.ndarray, seq_id, n_kv: int):
        self.pos, self.n_kv, self.window = pos, int(n_kv), cache.swa_window
        self.cell_pos = cache.pos[:n_kv].copy()
        self.cell_seq = cache.seq[:n_kv].copy()
        self.bits = _bits(seq_id)
        self._full: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.pos), self.n_kv

    def visible(self, r0: int, r1: int) -> np.ndarray:
        """bool [r1 - r0, n_kv]: query rows r0..r1 against every cell."""
        q = self.pos[r0:r1, None]
        bits = self.bits if isinstance(self.bits, int) else self.bits[r0:r1, None]
        ok = ((self.cell_seq[None, :] & bits) != 0) & (self.cell_pos[None, :] <= q)
        if self.window > 0:
            ok &= (q - self.cell_pos[None, :]) < self.window
        return ok

    @staticmethod
    def _f32(ok: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.where(ok, np.float32(0), np.float32(-np.inf)))

    def full(self) -> torch.Tensor:
        """f32 [n, n_kv], made once (every layer of a step reads the same)."""
        if self._full is None:
            self._full = self._f32(self.visible(0, len(self.pos)))
        return self._full

    def rows(self, rows: list[int]) -> "CellMask":
        """The mask of query rows `rows` alone, over the same cells (the last layer of a prompt)."""
        m = copy.copy(self)
        m.pos = self.pos[rows]
        m.bits = self.bits if isinstance(self.bits, int) else self.bits[rows]
        m._full = None
        return m

    def block(self, r0: int, r1: int) -> tuple[int, int, torch.Tensor]:
        """The cells [c0, c1) that any of query rows r0..r1 may see (a causal prompt skips those after its
        last row, a sliding window those behind its first) and the f32 mask [r1 - r0, c1 - c0] over them."""
        ok = self.visible(r0, r1)
        seen = np.flatnonzero(ok.any(0))
        c0, c1 = (int(seen[0]), int(seen[-1]) + 1) if seen.size else (0, 0)
        return c0, c1, self._f32(ok[:, c0:c1])


class StepMasks(Mapping):
    """A ubatch's masks, per cache name: `cells[name]` the CellMask, `[name]` the whole f32 mask, made on
    first use (a one-token step reads it; a long prefill only ever takes blocks of it)."""

    def __init__(self, cells: dict[str, CellMask]):
        self.cells = cells

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.cells[name].full()

    def __iter__(self):
        return iter(self.cells)

    def __len__(self) -> int:
        return len(self.cells)


class KVCache:
    """Cells shared by a group of layers, with each layer's K and V rows."""

    def __init__(self, name: str, layers: list[int], n_cells: int, k_width: int, v_width: int,
                 kv_type: str = "f16", swa_window: int = 0, pages: "PageWork | None" = None):
        if kv_type not in KV_TYPES:
            raise ValueError(f"unknown KV type {kv_type!r}; choose one of {', '.join(KV_TYPES)}")
        self.name, self.layers, self.n_cells = name, list(layers), int(n_cells)
        self.k_width, self.v_width, self.kv_type = k_width, v_width, kv_type
        self.swa_window = int(swa_window)
        self.dtype = KV_TYPES[kv_type]
        self.pos = np.full(self.n_cells, -1, dtype=np.int64)
        self.seq = np.zeros(self.n_cells, dtype=np.int64)
        self.shift = np.zeros(self.n_cells, dtype=np.int64)
        self.has_shift = False
        self.head = 0
        # allocated and touched now (zeros writes every page), so the first reply allocates nothing; with
        # a load's PageWork, zero-filled on its thread (done before the load ends)
        alloc = torch.zeros if pages is None else torch.empty
        self.k = {il: alloc(self.n_cells, row_width(kv_type, k_width), dtype=self.dtype) for il in layers}
        self.v = {il: alloc(self.n_cells, row_width(kv_type, v_width), dtype=self.dtype) for il in layers}
        if pages is not None:
            pages.zero([*self.k.values(), *self.v.values()])
        self._f32: tuple[torch.Tensor, torch.Tensor] | None = None     # read_f32's buffers (one layer's K, V)

    # ---- bookkeeping ----------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.k, self.v) for t in d.values())

    def used(self) -> int:
        return int((self.seq != 0).sum())

    def n_kv(self) -> int:
        """Cells attention must read: up to the last one in use."""
        nz = np.flatnonzero(self.seq)
        return int(nz[-1]) + 1 if nz.size else 0

    def _cells_of(self, seq_id: int, p0: int = 0, p1: int = -1) -> np.ndarray:
        p1 = np.iinfo(np.int64).max if p1 < 0 else p1
        m = (self.seq & _bit(seq_id)) != 0
        return m & (self.pos >= max(p0, 0)) & (self.pos < p1)

    def seq_pos_min(self, seq_id: int) -> int:
        m = (self.seq & _bit(seq_id)) != 0
        return int(self.pos[m].min()) if m.any() else -1

    def seq_pos_max(self, seq_id: int) -> int:
        m = (self.seq & _bit(seq_id)) != 0
        return int(self.pos[m].max()) if m.any() else -1

    def _free(self, m: np.ndarray) -> None:
        self.seq[m] = 0
        self.pos[m] = -1
        self.shift[m] = 0

    def clear(self) -> None:
        self._free(np.ones(self.n_cells, dtype=bool))
        self.head = 0
        self.has_shift = False

    # ---- sequence operations (llama_memory_seq_*) ------------------------------------------------
    def seq_rm(self, seq_id: int, p0: int = 0, p1: int = -1) -> None:
        """Drop seq_id from cells with p0 <= pos < p1 (p1 < 0: to the end); seq_id < 0: every sequence."""
        if seq_id < 0:
            p1v = np.iinfo(np.int64).max if p1 < 0 else p1
            m = (self.seq != 0) & (self.pos >= max(p0, 0)) & (self.pos < p1v)
            self._free(m)
        else:
            m = self._cells_of(seq_id, p0, p1)
            self.seq[m] &= ~_bit(seq_id)
            self._free(m & (self.seq == 0))
        if m.any():
            self.head = min(self.head, int(np.flatnonzero(m)[0]))

    def seq_cp(self, src: int, dst: int, p0: int = 0, p1: int = -1) -> None:
        self.seq[self._cells_of(src, p0, p1)] |= _bit(dst)

    def seq_keep(self, seq_id: int) -> None:
        keep = (self.seq & _bit(seq_id)) != 0
        self.seq[keep] = _bit(seq_id)
        self._free(~keep)

    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        """Move positions in [p0, p1) of seq_id by delta; cells pushed below 0 are dropped. K is
        re-rotated by apply_shift before the next compute."""
        if delta == 0:
            return
        m = self._cells_of(seq_id, p0, p1)
        if not m.any():
            return
        self.pos[m] += delta
        self.shift[m] += delta
        self.has_shift = True
        self._free(m & (self.pos < 0))

    # ---- a ubatch --------------------------------------------------------------------------------
    def find_slot(self, pos: np.ndarray, seq_id) -> np.ndarray | None:
        """Cells for len(pos) new tokens (of seq_id, or of seq_id[i] each): empty ones, and in a
        sliding-window cache ones that left the window of their sequence's next position (as it is
        before this ubatch, so no query of it can see them). Searched from `head`; None when full."""
        n = len(pos)
        ok = self.seq == 0
        if self.swa_window > 0:
            single = (self.seq != 0) & ((self.seq & (self.seq - 1)) == 0)
            for s in np.unique(self.seq[single]):
                s_id = int(s).bit_length() - 1
                nxt = self.seq_pos_max(s_id) + 1
                ok |= (self.seq == s) & (nxt - self.pos >= self.swa_window)
        cand = np.flatnonzero(ok[self.head:])[:n] + self.head     # from head on, then wrapping around
        if len(cand) < n:
            cand = np.concatenate([cand, np.flatnonzero(ok[:self.head])[:n - len(cand)]])
        if len(cand) < n:
            return None
        return cand

    def apply(self, slots: np.ndarray, pos: np.ndarray, seq_id) -> None:
        """Claim `slots` for the tokens at `pos` of seq_id (one id, or one per token)."""
        self.pos[slots] = pos
        self.seq[slots] = _bits(seq_id)
        self.shift[slots] = 0
        self.head = (int(slots[-1]) + 1) % self.n_cells

    def mask(self, pos: np.ndarray, seq_id, n_kv: int) -> torch.Tensor:
        """f32 [len(pos), n_kv]: 0 where a query may see a cell (its own sequence, not in its future,
        inside the window on a sliding cache), -inf elsewhere. seq_id: one id, or one per query."""
        return CellMask(self, pos, seq_id, n_kv).full()

    def cell_mask(self, pos: np.ndarray, seq_id, n_kv: int) -> CellMask:
        """The same mask, made a block of query rows at a time (engine/ops.py attend)."""
        return CellMask(self, pos, seq_id, n_kv)

    def seq_cells(self, seq_id: int, q_pos_min: int) -> np.ndarray:
        """seq_id's cells that a query at q_pos_min or later may see (on a sliding cache, those inside
        its window), in position order: the same list whatever other sequences hold, so a sequence
        attended over it alone gets the same numbers in any batch."""
        m = (self.seq & _bit(seq_id)) != 0
        if self.swa_window > 0:
            m &= self.pos > q_pos_min - self.swa_window
        cells = np.flatnonzero(m)
        return cells[np.argsort(self.pos[cells], kind="stable")]

    def mask_cells(self, pos: np.ndarray, cells: np.ndarray) -> torch.Tensor:
        """f32 [len(pos), len(cells)] over one sequence's cells: causal, and the window on a sliding cache."""
        cp, q = self.pos[cells][None, :], pos[:, None]
        ok = cp <= q
        if self.swa_window > 0:
            ok &= (q - cp) < self.swa_window
        m = torch.zeros(ok.shape, dtype=torch.float32)
        m.masked_fill_(torch.from_numpy(~ok), float("-inf"))
        return m

    # ---- K/V rows ----------------------------------------------------------------------------------
    def _store(self, rows: torch.Tensor) -> torch.Tensor:
        return quantize_q8_0(rows) if self.kv_type == "q8_0" else rows.to(self.dtype)

    def _load(self, rows: torch.Tensor, width: int) -> torch.Tensor:
        if self.kv_type == "q8_0":
            return dequantize_torch(rows.reshape(-1), GGMLType.Q8_0, (rows.shape[0], width))
        return rows.float()

    def write(self, il: int, slots: np.ndarray, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this ubatch's K and V (f32 [n, width]) for layer il into `slots`."""
        idx = torch.from_numpy(slots)
        self.k[il].index_copy_(0, idx, self._store(k))
        self.v[il].index_copy_(0, idx, self._store(v))

    def read(self, il: int, n_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of cells [0, n_kv) as f32."""
        return self._load(self.k[il][:n_kv], self.k_width), self._load(self.v[il][:n_kv], self.v_width)

    def read_f32(self, il: int, n_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of cells [0, n_kv) as f32, like read, but converted into two buffers of n_cells rows
        that every layer of the cache reuses (valid until the next read_f32): allocated and touched whole
        on first use (the load's warmup), so a prompt at a full context converts into memory it already
        has. CPU rows only."""
        if self._f32 is None:
            self._f32 = (torch.zeros(self.n_cells, self.k_width), torch.zeros(self.n_cells, self.v_width))
        K, V = self._f32[0][:n_kv], self._f32[1][:n_kv]
        if self.kv_type == "q8_0":
            K.copy_(self._load(self.k[il][:n_kv], self.k_width))
            V.copy_(self._load(self.v[il][:n_kv], self.v_width))
        else:
            K.copy_(self.k[il][:n_kv])
            V.copy_(self.v[il][:n_kv])
        return K, V

    @property
    def f32_nbytes(self) -> int:
        """Bytes of read_f32's buffers once allocated (n_cells rows of K and V as f32)."""
        return 4 * self.n_cells * (self.k_width + self.v_width)

    def read_cells(self, il: int, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the given cells (int64 indices), in that order, as f32."""
        at = cells.to(self.k[il].device)          # offload: a resident layer's rows are on the GPU
        return (self._load(self.k[il].index_select(0, at), self.k_width),
                self._load(self.v[il].index_select(0, at), self.v_width))

    def apply_shift(self, rope_shift: RopeShift) -> None:
        """Re-rotate K of every cell that seq_add moved, by the distance it moved."""
        if not self.has_shift:
            return
        cells = np.flatnonzero((self.shift != 0) & (self.seq != 0))
        if cells.size:
            idx = torch.from_numpy(cells)
            delta = torch.from_numpy(self.shift[cells])
            for il in self.layers:
                at = idx.to(self.k[il].device)          # offload: a resident layer's rows are on the GPU
                k = self._load(self.k[il].index_select(0, at), self.k_width)
                self.k[il].index_copy_(0, at, self._store(rope_shift(il, k, delta)))
        self.shift[:] = 0
        self.has_shift = False

    # ---- views ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        seqs: dict[int, dict] = {}
        for s in range(MAX_SEQ):
            m = (self.seq & (1 << s)) != 0
            if m.any():
                p = self.pos[m]
                seqs[s] = {"cells": int(m.sum()), "pos_min": int(p.min()), "pos_max": int(p.max())}
        out = {"name": self.name, "layers": list(self.layers), "kv_type": self.kv_type,
               "used": self.used(), "total": self.n_cells, "n_kv": self.n_kv(), "seqs": seqs}
        if self.swa_window:
            out["swa_window"] = self.swa_window
            for s, v in seqs.items():         # the window of the sequence's next position
                v["window_start"] = max(0, v["pos_max"] + 2 - self.swa_window)
                v["in_window"] = int((((self.seq & (1 << s)) != 0) & (self.pos >= v["window_start"])).sum())
        return out


class KVMemory:
    """All of a model's caches (one global, and one sliding-window when the model has such layers);
    sequence operations apply to every cache."""

    def __init__(self, caches: list[KVCache]):
        self.caches = [c for c in caches if c.layers]
        self._of = {il: c for c in self.caches for il in c.layers}

    def cache_of(self, il: int) -> KVCache:
        return self._of[il]

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.caches)

    def clear(self) -> None:
        for c in self.caches:
            c.clear()

    def seq_rm(self, seq_id: int, p0: int = 0, p1: int = -1) -> None:
        for c in self.caches:
            c.seq_rm(seq_id, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int = 0, p1: int = -1) -> None:
        for c in self.caches:
            c.seq_cp(src, dst, p0, p1)

    def seq_keep(self, seq_id: int) -> None:
        for c in self.caches:
            c.seq_keep(seq_id)

    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        for c in self.caches:
            c.seq_add(seq_id, p0, p1, delta)

    def seq_pos_max(self, seq_id: int) -> int:
        return max((c.seq_pos_max(seq_id) for c in self.caches), default=-1)

    def find_slot(self, pos: np.ndarray, seq_id) -> list[np.ndarray] | None:
        """Cells in every cache for a ubatch (of one sequence, or seq_id[i] per token), claimed; None
        (nothing claimed) when a cache is full."""
        slots = [c.find_slot(pos, seq_id) for c in self.caches]
        if any(s is None for s in slots):
            return None
        for c, s in zip(self.caches, slots):
            c.apply(s, pos, seq_id)
        return slots

    def apply_shift(self, rope_shift: RopeShift) -> None:
        for c in self.caches:
            c.apply_shift(rope_shift)

    def snapshot(self) -> dict:
        caches = [c.snapshot() for c in self.caches]
        main = max(caches, key=lambda c: c["total"]) if caches else {"used": 0, "total": 0}
        return {"used": main["used"], "total": main["total"], "caches": caches}
