"""The KV cache cell by cell, compact enough to send with every KV snapshot: for each cache, runs
over the cell index of (sequence mask, inside the sliding window, cell count).

    add_cell_runs(snap, model.kv)     # snap = model.kv_snapshot(); each cache dict gains
        "cells": [[seq_mask, in_window, count], ...]   # seq_mask 0: free; bit s: sequence s holds it
        "cell_block": 1                                # cells per run unit (>1 when coarsened)

One chat filling the cache in order is a run or two; a cache fragmented by many sequences is
coarsened to blocks of cells (each block shows its first used cell) so a snapshot stays under
MAX_RUNS runs. in_window is 1 on caches without a window; on a sliding-window cache it is 1 for
cells the next token of one of their sequences can still see.
"""
from __future__ import annotations

import numpy as np

MAX_RUNS = 2048


def _in_window(cache) -> np.ndarray:
    seq, pos = cache.seq, cache.pos
    if not getattr(cache, "swa_window", 0):
        return np.ones(len(seq), dtype=bool)
    inside = np.zeros(len(seq), dtype=bool)
    for s in range(63):
        held = (seq & (1 << s)) != 0
        if held.any():
            start = int(pos[held].max()) + 2 - cache.swa_window     # the window of the next position
            inside |= held & (pos >= start)
    return inside


def _runs(values: np.ndarray, flags: np.ndarray, unit: int) -> list[list[int]]:
    if len(values) == 0:
        return []
    change = np.flatnonzero((values[1:] != values[:-1]) | (flags[1:] != flags[:-1])) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [len(values)]))
    return [[int(values[a]), int(flags[a]), int(b - a) * unit] for a, b in zip(starts, ends)]


def cell_runs(cache, max_runs: int = MAX_RUNS) -> tuple[list[list[int]], int]:
    """(runs, cells per unit) for one KVCache; the counts add up to its number of cells."""
    seq = np.asarray(cache.seq, dtype=np.int64)
    win = _in_window(cache)
    runs = _runs(seq, win, 1)
    block = 1
    while len(runs) > max_runs:
        block *= 2
        n = len(seq) // block * block
        s, w = seq[:n].reshape(-1, block), win[:n].reshape(-1, block)
        first = np.where((s != 0).any(1), np.argmax(s != 0, axis=1), 0)
        rows = np.arange(len(s))
        runs = _runs(s[rows, first], w[rows, first], block)
        if n < len(seq):                                  # the tail shorter than a block
            runs.append([int(seq[n]), int(win[n]), len(seq) - n])
    return runs, block


def add_cell_runs(snap: dict, kv) -> dict:
    """Add "cells" and "cell_block" to each cache dict of a kv_snapshot (matched by name)."""
    by_name = {c.name: c for c in getattr(kv, "caches", [])}
    for c in snap.get("caches") or []:
        cache = by_name.get(c.get("name"))
        if cache is not None:
            c["cells"], c["cell_block"] = cell_runs(cache)
    return snap
