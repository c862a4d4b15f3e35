"""A horizontal stacked bar: weights / KV / compute / overhead of one place (RAM or VRAM),
against what is free there now."""
from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.format import size

CONCERNS = (("weights", "#3b82f6"), ("kv", "#f59e0b"), ("compute", "#10b981"), ("overhead", "#a1a1aa"))
TIPS = {"weights": "model weights held in this place",
        "kv": "KV cache: keys and values of every token in the context",
        "compute": "scratch buffers for a forward pass (activations, attention scores, logits)",
        "overhead": "the engine's fixed cost: Python, torch, the GGUF metadata, the tokenizer"}


class MemoryBar(QWidget):
    def __init__(self, place: str, parent=None):
        super().__init__(parent)
        self.place = place
        self.parts: dict[str, int] = {}
        self.free: int | None = None
        self.note = ""
        self.setMinimumHeight(40)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_values(self, parts: dict, free: int | None, note: str = "") -> None:
        self.parts = {k: int(parts.get(k, 0)) for k, _ in CONCERNS}
        self.free, self.note = free, note
        total = sum(self.parts.values())
        lines = [f"{self.place}: {size(total)} needed in all"]
        lines += [f"  {k}: {size(v)} ({TIPS[k]})" for k, v in self.parts.items() if v]
        lines.append(f"  free now: {size(free)}" if free is not None else "  no NVIDIA GPU found")
        self.setToolTip("\n".join(lines))
        self.update()

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def sizeHint(self) -> QSize:
        return QSize(420, 40)

    def paintEvent(self, _):
        p = QPainter(self)
        w, h = self.width() - 2, 20
        total, free = self.total, self.free
        frame = self.palette().color(self.foregroundRole())
        if free is not None:
            scale = max(total, min(free, 4 * max(total, 1))) * 1.08 or 1
        else:
            scale = max(total, 1) * 1.08
        x = 1.0
        p.fillRect(QRectF(1, 1, w, h), QColor(0, 0, 0, 0))
        for key, colour in CONCERNS:
            seg = self.parts.get(key, 0) / scale * w
            if seg > 0:
                p.fillRect(QRectF(x, 1, seg, h), QColor(colour))
                x += seg
        p.setPen(QPen(frame, 1))
        p.drawRect(QRectF(1, 1, w, h))
        if free is not None:
            fx = min(free / scale, 1.0) * w
            over = total > free
            p.setPen(QPen(QColor("#dc2626" if over else frame), 2, Qt.PenStyle.DashLine))
            p.drawLine(int(1 + fx), 0, int(1 + fx), h + 2)
            label = f"free now {size(free)}" + (" ▸" if free > scale else "")
        else:
            label = self.note or "no NVIDIA GPU"
        p.setPen(frame)
        p.drawText(QRectF(1, h + 3, w, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
        p.drawText(QRectF(1, h + 3, w, 16), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   f"{size(total)} needed")
