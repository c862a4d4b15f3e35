"""The KV cache as a map: one small square per cell (or per block of cells when the cache is large),
in cell order, coloured by the sequence holding it, from the cell runs the engine sends with each
KV snapshot (engine/kv_cell_map.py). A block of cells partly in use is filled in proportion. Each
cache is drawn on its own: the global cache, and for sliding-window models the window cache, where
the cells the next token can still see are outlined and the rest (kept until overwritten) hatched."""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

SEQ_COLOURS = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#ec4899", "#14b8a6", "#84cc16"]
SHARED = "#64748b"         # a cell held by more than one sequence
FREE = "#d4d4d8"
WINDOW_EDGE = "#111827"
MAX_SQUARES = 256          # per cache; larger caches show blocks of cells
SQ, GAP = 9, 2


@dataclass(frozen=True)
class Square:
    mask: int              # sequences holding the block's cells (its most common owner); 0: free
    used: float            # share of the block's cells in use, 0..1
    in_window: bool        # a sliding-window cache: some used cell of the block is inside the window


def colour_of(mask: int) -> QColor:
    if mask & (mask - 1):
        return QColor(SHARED)
    return QColor(SEQ_COLOURS[(mask.bit_length() - 1) % len(SEQ_COLOURS)])


def _runs(cache: dict) -> list[tuple[int, bool, int]]:
    """(mask, in_window, count) over the cell index. Older snapshots without "cells": each
    sequence's cells laid out in order, older ones (outside the window) first."""
    if cache.get("cells") is not None:
        return [(int(m), bool(w), int(n)) for m, w, n in cache["cells"]]
    runs = []
    for s, info in sorted((cache.get("seqs") or {}).items(), key=lambda kv: int(kv[0])):
        cells = int(info.get("cells", 0))
        in_win = int(info.get("in_window", cells))
        runs += [(1 << int(s), False, cells - in_win), (1 << int(s), True, in_win)]
    runs.append((0, False, int(cache.get("total", 0)) - sum(n for _, _, n in runs)))
    return [r for r in runs if r[2] > 0]


def cache_squares(cache: dict, max_squares: int = MAX_SQUARES) -> tuple[int, list[Square]]:
    """(cells per square, the squares in cell order)."""
    total = int(cache.get("total", 0))
    if total <= 0:
        return 1, []
    per = max(1, ceil(total / max_squares))
    squares: list[Square] = []
    owners: dict[int, int] = {}
    used = 0
    win = False
    filled = 0                                  # cells of the current square seen so far

    def close(size: int) -> None:
        nonlocal owners, used, win, filled
        mask = max(owners, key=owners.get) if owners else 0
        squares.append(Square(mask, used / size, win))
        owners, used, win, filled = {}, 0, False, 0

    for mask, in_win, count in _runs(cache):
        while count > 0:
            take = min(count, per - filled)
            if mask:
                owners[mask] = owners.get(mask, 0) + take
                used += take
                win = win or in_win
            filled += take
            count -= take
            if filled == per:
                close(per)
    if filled:
        close(filled)
    return per, squares


class KVCellMap(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.snapshot: dict = {}
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self.setToolTip("Each square is a KV cache cell (or a block of cells), in cell order: coloured by the "
                        "sequence holding it, grey when free")
        self.setMinimumHeight(60)

    def set_snapshot(self, snap: dict) -> None:
        self.snapshot = dict(snap or {})
        self.updateGeometry()
        self.update()
        self.setToolTip(self.describe())

    def caches(self) -> list[dict]:
        return list(self.snapshot.get("caches") or [])

    def title(self, c: dict, width: int | None = None) -> str:
        """The cache's heading; the layer count goes first when the width is short, then it elides."""
        per, _ = cache_squares(c)
        name = f"sliding window {c['swa_window']}" if c.get("swa_window") else "global"
        block = f" · ■ = {per} cells" if per > 1 else ""
        full = f"{name} · {c.get('used', 0)} / {c.get('total', 0)} cells · {len(c.get('layers', []))} layers{block}"
        if width is None:
            return full
        fm = self.fontMetrics()
        for text in (full, f"{name} · {c.get('used', 0)} / {c.get('total', 0)}{block}"):
            if fm.horizontalAdvance(text) <= width:
                return text
        return fm.elidedText(text, Qt.TextElideMode.ElideRight, width)

    def describe(self) -> str:
        lines = []
        for c in self.caches():
            per, sq = cache_squares(c)
            kind = (f"sliding-window cache (window {c['swa_window']} tokens; outlined: cells the next token sees, "
                    f"hatched: kept until overwritten)" if c.get("swa_window") else "global cache")
            lines.append(f"{kind}: {c.get('used', 0)} of {c.get('total', 0)} cells used, "
                         f"{len(c.get('layers', []))} layers, one square = {per} cell{'s' if per > 1 else ''}")
        return "\n".join(lines) or "No model loaded: the KV cache is empty"

    def _cols(self, width: int | None = None) -> int:
        return max(8, ((self.width() if width is None else width) - 4) // (SQ + GAP))

    def heightForWidth(self, w: int) -> int:
        return self._height(self._cols(w))

    def hasHeightForWidth(self) -> bool:
        return True

    def _height(self, cols: int) -> int:
        h = 4
        for c in self.caches():
            _, sq = cache_squares(c)
            h += 18 + ceil(len(sq) / cols) * (SQ + GAP) + 8
        return max(h, 40)

    def sizeHint(self) -> QSize:
        return QSize(260, self._height(self._cols()))

    def minimumSizeHint(self) -> QSize:
        return QSize(120, self._height(self._cols()))

    def square_rect(self, i: int, cols: int, y: float) -> QRectF:
        return QRectF(2 + (i % cols) * (SQ + GAP), y + (i // cols) * (SQ + GAP), SQ, SQ)

    def paintEvent(self, _):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        cols = self._cols()
        y = 2
        text = self.palette().color(self.foregroundRole())
        if not self.caches():
            p.setPen(text)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "KV cache: no model loaded")
            return
        for c in self.caches():
            per, squares = cache_squares(c)
            p.setPen(text)
            p.drawText(QRectF(2, y, self.width() - 4, 16), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                       self.title(c, self.width() - 4))
            y += 18
            swa = bool(c.get("swa_window"))
            for i, sq in enumerate(squares):
                self._paint_square(p, self.square_rect(i, cols, y), sq, swa)
            y += ceil(len(squares) / cols) * (SQ + GAP) + 8

    @staticmethod
    def _paint_square(p: QPainter, r: QRectF, sq: Square, swa: bool) -> None:
        p.fillRect(r, QColor(FREE))
        if not sq.mask:
            return
        col = colour_of(sq.mask)
        h = max(2.0, SQ * sq.used)
        part = QRectF(r.left(), r.bottom() - h, r.width(), h)
        if swa and not sq.in_window:
            p.fillRect(part, col.lighter(160))
            p.setPen(QPen(col, 1))
            p.drawLine(r.bottomLeft(), r.topRight())
            return
        p.fillRect(part, col)
        if swa:
            p.setPen(QPen(QColor(WINDOW_EDGE), 1))
            p.drawRect(r.adjusted(0, 0, -1, -1))
