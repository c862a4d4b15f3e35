"""Session state straight from an engine.kv_cache.KVMemory: what runtime.Model's session hooks can
delegate to (they add only the sequence's cached tokens).

    layout = memory_layout(model.kv)
    state = export_memory(model.kv, seq_id, model.cached_tokens(seq_id))   # copies; cache unchanged
    import_memory(model.kv, seq_id, state)          # same slots, positions, pending shift, search head;
                                                    # refuses (changing nothing) if another sequence
                                                    # holds one of those cells
"""
from __future__ import annotations

import numpy as np
import torch

from engine.errors import BadRequest
from engine.session import CacheCells, CacheLayout, KVState


def memory_layout(mem) -> list[CacheLayout]:
    return [CacheLayout(c.name, list(c.layers), c.n_cells, int(c.k[c.layers[0]].shape[1]),
                        int(c.v[c.layers[0]].shape[1]), c.dtype) for c in mem.caches]


def export_memory(mem, seq_id: int, cached: list[int]) -> KVState:
    """Copies of seq_id's cells in every cache of a KVMemory (the cache is not changed)."""
    caches = []
    for c in mem.caches:
        sel = np.flatnonzero((c.seq >> seq_id) & 1)
        caches.append(CacheCells(
            c.name, list(c.layers), c.n_cells, torch.from_numpy(sel), torch.from_numpy(c.pos[sel].copy()),
            torch.from_numpy(c.seq[sel].copy()),
            [take_rows(c.k[il], sel) for il in c.layers], [take_rows(c.v[il], sel) for il in c.layers],
            torch.from_numpy(c.shift[sel].copy()), int(c.head)))
    return KVState(list(cached), caches)


def check_memory_free(mem, seq_id: int, state: KVState) -> None:
    """Refuse (changing nothing) when another sequence holds a cell this session needs."""
    for c, cc in zip(mem.caches, state.caches):
        held = c.seq[cc.idx.numpy()] & ~np.int64(1 << seq_id)
        if held.any():
            raise BadRequest("the KV cells this session needs are in use by another conversation; "
                             "reset the model (or that conversation) first")


def import_memory(mem, seq_id: int, state: KVState) -> None:
    """Replace seq_id's cells in every cache with `state`'s, in the same slots."""
    check_memory_free(mem, seq_id, state)
    for c, cc in zip(mem.caches, state.caches):
        c.seq_rm(seq_id)
        sel = cc.idx.numpy()
        c.pos[sel], c.seq[sel] = cc.pos.numpy(), cc.seq.numpy()
        c.shift[sel] = cc.shift.numpy() if cc.shift is not None else 0
        c.has_shift = bool(c.shift.any())
        for il, k, v in zip(c.layers, cc.k, cc.v):
            put_rows(c.k[il], sel, k)
            put_rows(c.v[il], sel, v)
        c.head = int(cc.head)


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _np_view(t: torch.Tensor) -> np.ndarray:
    return t.view(_SAME_SIZE_INT[t.element_size()]).numpy()


def take_rows(t: torch.Tensor, sel: np.ndarray) -> torch.Tensor:
    """A copy of rows `sel` of a [n_cells, width] cache tensor. On the CPU by numpy fancy indexing
    (any dtype, bf16 included, via a same-size integer view): torch's threaded gather on f16 rows is
    tens of times slower when the machine's cores are busy with other work."""
    if t.device.type != "cpu":
        return t.index_select(0, torch.from_numpy(sel).to(t.device)).cpu()
    return torch.from_numpy(_np_view(t)[sel]).view(t.dtype)


def put_rows(t: torch.Tensor, sel: np.ndarray, rows: torch.Tensor) -> None:
    """Write `rows` into rows `sel` of a cache tensor (the counterpart of take_rows)."""
    if t.device.type != "cpu":
        t.index_copy_(0, torch.from_numpy(sel).to(t.device), rows.to(t.device, t.dtype))
        return
    _np_view(t)[sel] = _np_view(rows.to(t.dtype).contiguous())
