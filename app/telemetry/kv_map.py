"""The KV cache as a map: one small square per cell (or per block of cells when the cache is large),
coloured by the sequence holding it. Each cache is drawn on its own: the global cache, and for
sliding-window models the window cache, whose cells inside the current window are drawn solid and
the rest (kept until overwritten) hatched."""
from __future__ import annotations

from math import ceil

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

SEQ_COLOURS = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#ec4899", "#14b8a6", "#84cc16"]
FREE = "#d4d4d8"
MAX_SQUARES = 512          # per cache; larger caches show blocks of cells
SQ, GAP = 9, 2


def cache_squares(cache: dict, max_squares: int = MAX_SQUARES) -> tuple[int, list[tuple[int | None, bool]]]:
    """(cells per square, [(sequence or None for free, inside the SWA window)] per square).
    Sequences fill cells in order (seq 0's cells first), which is how a single chat fills the cache."""
    total = int(cache.get("total", 0))
    if total <= 0:
        return 1, []
    per = max(1, ceil(total / max_squares))
    n = ceil(total / per)
    owners: list[tuple[int | None, bool]] = []
    runs = []
    for s, info in sorted((cache.get("seqs") or {}).items(), key=lambda kv: int(kv[0])):
        cells = int(info.get("cells", 0))
        in_win = int(info.get("in_window", cells))
        runs.append((int(s), cells - in_win, False))      # older cells first (outside the window)
        runs.append((int(s), in_win, True))
    cell_owner: list[tuple[int | None, bool]] = []
    for s, count, win in runs:
        cell_owner.extend([(s, win)] * count)
    for i in range(n):
        lo = i * per
        owners.append(cell_owner[lo] if lo < len(cell_owner) else (None, False))
    return per, owners


class KVCellMap(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.snapshot: dict = {}
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self.setToolTip("Each square is a KV cache cell (or a block of cells): coloured when a sequence "
                        "holds it, grey when free")
        self.setMinimumHeight(60)

    def set_snapshot(self, snap: dict) -> None:
        self.snapshot = dict(snap or {})
        self.updateGeometry()
        self.update()
        self.setToolTip(self.describe())

    def caches(self) -> list[dict]:
        return list(self.snapshot.get("caches") or [])

    def describe(self) -> str:
        lines = []
        for c in self.caches():
            per, _ = cache_squares(c)
            kind = f"sliding-window cache (window {c['swa_window']})" if c.get("swa_window") else "global cache"
            lines.append(f"{kind}: {c.get('used', 0)} of {c.get('total', 0)} cells used, layers "
                         f"{len(c.get('layers', []))}, one square = {per} cell{'s' if per > 1 else ''}")
        return "\n".join(lines) or "No model loaded: the KV cache is empty"

    def _cols(self) -> int:
        return max(8, (self.width() - 4) // (SQ + GAP))

    def heightForWidth(self, w: int) -> int:
        return self._height(max(8, (w - 4) // (SQ + GAP)))

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
            label = (f"SWA window {c['swa_window']} · {c.get('used', 0)} / {c.get('total', 0)} cells"
                     if c.get("swa_window") else f"global · {c.get('used', 0)} / {c.get('total', 0)} cells")
            if per > 1:
                label += f" · ■ = {per} cells"
            p.setPen(text)
            p.drawText(QRectF(2, y, self.width() - 4, 16), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                       label)
            y += 18
            for i, (seq, in_win) in enumerate(squares):
                r = QRectF(2 + (i % cols) * (SQ + GAP), y + (i // cols) * (SQ + GAP), SQ, SQ)
                if seq is None:
                    p.fillRect(r, QColor(FREE))
                    continue
                col = QColor(SEQ_COLOURS[seq % len(SEQ_COLOURS)])
                if c.get("swa_window") and not in_win:
                    p.fillRect(r, col.lighter(160))
                    p.setPen(QPen(col, 1))
                    p.drawLine(r.topLeft(), r.bottomRight())
                else:
                    p.fillRect(r, col)
            y += ceil(len(squares) / cols) * (SQ + GAP) + 8
