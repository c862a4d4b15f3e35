"""The KV cell map draws the engine's cells where they are, by sequence, with the sliding window marked."""
from __future__ import annotations

from PySide6.QtGui import QColor

from app.telemetry.kv_map import FREE, SEQ_COLOURS, SHARED, SQ, KVCellMap, Square, cache_squares


def test_squares_follow_the_cell_runs_one_cell_each():
    c = {"total": 16, "used": 8, "cells": [[1, 1, 5], [2, 1, 3], [0, 1, 3], [1 | 4, 1, 2], [0, 1, 3]]}
    per, sq = cache_squares(c)
    assert per == 1 and len(sq) == 16
    assert [s.mask for s in sq] == [1] * 5 + [2] * 3 + [0] * 3 + [5] * 2 + [0] * 3
    assert all(s.used == (1.0 if s.mask else 0.0) for s in sq)


def test_large_caches_show_blocks_filled_in_proportion():
    c = {"total": 4096, "used": 1003, "cells": [[1, 1, 1003], [0, 1, 3093]]}
    per, sq = cache_squares(c, max_squares=512)
    assert per == 8 and len(sq) == 512
    assert all(s.mask == 1 and s.used == 1.0 for s in sq[:125])
    assert sq[125] == Square(1, 3 / 8, True)
    assert all(s.mask == 0 for s in sq[126:])
    odd = {"total": 1030, "cells": [[0, 1, 1030]]}                # 1030 / 3 per square: a short last one
    per, sq = cache_squares(odd, max_squares=512)
    assert per == 3 and len(sq) == 344 and sum(1 for s in sq if s.used == 0) == 344


def test_old_snapshots_without_cells_still_draw():
    c = {"total": 10, "used": 4, "swa_window": 4, "seqs": {0: {"cells": 4, "in_window": 3}}}
    _, sq = cache_squares(c)
    assert [(s.mask, s.in_window) for s in sq[:5]] == [(1, False), (1, True), (1, True), (1, True), (0, False)]


def _pixel(img, r, dx, dy) -> str:
    return QColor(img.pixel(int(r.left() + dx), int(r.top() + dy))).name()


def test_painted_colours_mark_sequences_free_cells_and_the_window(qtbot):
    w = KVCellMap()
    qtbot.addWidget(w)
    w.resize(300, 200)
    snap = {"used": 6, "total": 12, "caches": [
        {"name": "swa", "total": 12, "used": 6, "swa_window": 4, "layers": [0, 1],
         "cells": [[1, 0, 3], [1, 1, 2], [3, 1, 1], [0, 1, 6]]}]}
    w.set_snapshot(snap)
    w.show()
    img = w.grab().toImage()
    cols, y0 = w._cols(), 2 + 18
    rect = lambda i: w.square_rect(i, cols, y0)                            # noqa: E731
    blue = QColor(SEQ_COLOURS[0])
    assert _pixel(img, rect(0), SQ - 2, SQ - 2) == blue.lighter(160).name()     # outside the window: pale, hatched
    assert _pixel(img, rect(3), SQ // 2, SQ // 2) == blue.name()               # inside: solid ...
    assert _pixel(img, rect(3), 0, SQ // 2) == "#111827"                       # ... and outlined
    assert _pixel(img, rect(5), SQ // 2, SQ // 2) == QColor(SHARED).name()     # held by sequences 0 and 1
    assert _pixel(img, rect(6), SQ // 2, SQ // 2) == QColor(FREE).name()
    assert "sliding-window cache (window 4 tokens" in w.toolTip() and "6 of 12 cells used" in w.toolTip()


def test_heading_keeps_the_block_size_when_the_dock_is_narrow(qtbot):
    w = KVCellMap()
    qtbot.addWidget(w)
    c = {"swa_window": 512, "used": 859, "total": 1024, "layers": list(range(15)), "cells": [[1, 1, 859], [0, 1, 165]]}
    wide = w.title(c, 2000)
    assert wide == "sliding window 512 · 859 / 1024 cells · 15 layers · ■ = 4 cells"
    narrow = w.title(c, w.fontMetrics().horizontalAdvance(wide) - 10)
    assert narrow == "sliding window 512 · 859 / 1024 · ■ = 4 cells"
    assert w.fontMetrics().horizontalAdvance(w.title(c, 60)) <= 60
