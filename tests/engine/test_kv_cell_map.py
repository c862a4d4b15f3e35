"""engine.kv_cell_map: the cell-by-cell view of a KV cache sent with every KV snapshot."""
from __future__ import annotations

import numpy as np

from engine.kv_cache import KVCache, KVMemory
from engine.kv_cell_map import add_cell_runs, cell_runs


def _cache(n_cells: int, swa: int = 0) -> KVCache:
    return KVCache("swa" if swa else "global", [0], n_cells=n_cells, k_width=32, v_width=32, swa_window=swa)


def _fill(c: KVCache, seq_id: int, positions) -> None:
    pos = np.asarray(positions, dtype=np.int64)
    slots = c.find_slot(pos, seq_id)
    c.apply(slots, pos, seq_id)


def _expand(runs):
    return [(m, w) for m, w, n in runs for _ in range(n)]


def test_runs_follow_the_cells_and_their_sequences():
    c = _cache(16)
    assert cell_runs(c) == ([[0, 1, 16]], 1)
    _fill(c, 0, range(5))
    _fill(c, 1, range(3))
    runs, block = cell_runs(c)
    assert block == 1 and runs == [[1, 1, 5], [2, 1, 3], [0, 1, 8]]
    c.seq_rm(0, 1, 3)                           # a hole in sequence 0: cells 1 and 2 are free again
    assert cell_runs(c)[0] == [[1, 1, 1], [0, 1, 2], [1, 1, 2], [2, 1, 3], [0, 1, 8]]
    c.seq_cp(1, 3)                              # cells shared by sequences 1 and 3
    assert [2 | 8, 1, 3] in cell_runs(c)[0]
    assert _expand(cell_runs(c)[0]) == [(int(m), 1) for m in c.seq]


def test_sliding_window_cells_outside_the_window_are_marked():
    c = _cache(8, swa=4)
    for p in range(10):                         # one token at a time, as decoding fills it
        _fill(c, 0, [p])
    runs, _ = cell_runs(c)
    cells = _expand(runs)
    assert len(cells) == 8 and all(m == 1 for m, _ in cells)
    inside = {int(c.pos[i]) for i, (_, w) in enumerate(cells) if w}
    assert inside == {7, 8, 9}                   # the next token (10) sees 7, 8, 9 and itself


def test_a_fragmented_cache_is_coarsened_under_the_limit():
    c = _cache(1000)
    for i in range(1000):
        _fill(c, i % 3, [i // 3])
    runs, block = cell_runs(c, max_runs=100)
    assert block > 1 and len(runs) <= 100
    assert sum(n for _, _, n in runs) == 1000
    assert {m for m, _, _ in runs} <= {1, 2, 4}


def test_add_cell_runs_annotates_each_cache_of_a_snapshot():
    g, s = _cache(32), _cache(12, swa=4)
    kv = KVMemory([g, s])
    for cache in (g, s):
        _fill(cache, 0, range(6))
    snap = add_cell_runs(kv.snapshot(), kv)
    for d, cache in zip(snap["caches"], (g, s)):
        assert sum(n for _, _, n in d["cells"]) == d["total"] == cache.n_cells
        assert sum(n for m, _, n in d["cells"] if m) == d["used"] == 6
        assert d["cell_block"] == 1
