"""Live graphs of the engine's memory: its RSS and the system's available RAM, and VRAM when an
NVIDIA GPU is there (otherwise a line saying so)."""
from __future__ import annotations

import collections

import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from app.format import MiB, size

WINDOWS = {"1 min": 60, "5 min": 300, "15 min": 900}


class MemoryGraphs(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        head = QHBoxLayout()
        head.addWidget(QLabel("<b>Memory</b>"))
        head.addStretch(1)
        self.window = QComboBox()
        self.window.addItems(list(WINDOWS))
        self.window.setToolTip("How much history the graphs show")
        self.window.currentTextChanged.connect(lambda _: self._redraw())
        head.addWidget(self.window)
        lay.addLayout(head)

        # engine RSS and RAM available differ by orders of magnitude: one plot each, each on its own scale
        self.rss_plot = self._plot("engine RSS (MiB)", "#3b82f6")
        self.rss_curve = self.rss_plot.curve
        self.avail_plot = self._plot("RAM available (MiB)", "#22c55e")
        self.avail_curve = self.avail_plot.curve
        self.avail_plot.setLabel("bottom", "seconds ago")
        self.rss_plot.setXLink(self.avail_plot)
        lay.addWidget(self.rss_plot)
        lay.addWidget(self.avail_plot)
        self.rss_label = QLabel("engine RSS —")
        self.rss_label.setToolTip("Resident memory of the engine process and its children: what it holds in RAM now")
        self.avail_label = QLabel("RAM available —")
        self.avail_label.setToolTip("Memory the system can still give to programs without swapping "
                                    "(psutil 'available'), of the total installed")
        lay.addWidget(self.rss_label)
        lay.addWidget(self.avail_label)

        self.vram_plot = pg.PlotWidget(background=None)
        self.vram_plot.setMinimumHeight(90)
        self.vram_plot.setMaximumHeight(140)
        self.vram_plot.setMouseEnabled(False, False)
        self.vram_plot.hideButtons()
        self.vram_plot.setLabel("left", "VRAM MiB")
        self.vram_curve = self.vram_plot.plot(pen=pg.mkPen("#a855f7", width=2))
        self.vram_plot.hide()
        lay.addWidget(self.vram_plot)
        self.vram_label = QLabel("VRAM: waiting for the engine")
        self.vram_label.setToolTip("GPU memory in use on GPU 0, of its total (NVIDIA GPUs only)")
        lay.addWidget(self.vram_label)

        self.samples: collections.deque = collections.deque(maxlen=4000)   # (t, rss, avail, vram_used)

    @staticmethod
    def _plot(title: str, colour: str) -> pg.PlotWidget:
        w = pg.PlotWidget(background=None)
        w.setMinimumHeight(90)
        w.setMaximumHeight(130)
        w.setMinimumWidth(200)
        w.setMouseEnabled(False, False)
        w.hideButtons()
        w.setTitle(title, size="9pt")
        w.getPlotItem().getAxis("left").setWidth(48)     # both plots' axes line up
        w.curve = w.plot(pen=pg.mkPen(colour, width=2))
        w.enableAutoRange(axis="y")
        return w

    def add(self, ev) -> None:
        """One protocol.Telemetry sample."""
        vram_used = None
        if ev.vram:
            vram_used = ev.vram[0]["used"]
            self.vram_label.setText(f"VRAM {size(ev.vram[0]['used'])} / {size(ev.vram[0]['total'])} "
                                    f"({ev.vram[0].get('name', 'GPU 0')})")
            self.vram_plot.show()
        else:
            self.vram_label.setText(f"VRAM: {ev.vram_note or 'no NVIDIA GPU'}")
            self.vram_plot.hide()
        self.samples.append((ev.t, ev.rss_bytes, ev.ram_available_bytes, vram_used))
        self.rss_label.setText(f"engine RSS {size(ev.rss_bytes)}")
        self.avail_label.setText(f"RAM available {size(ev.ram_available_bytes)} / {size(ev.ram_total_bytes)}")
        self._redraw()

    def _redraw(self) -> None:
        if not self.samples:
            return
        span = WINDOWS[self.window.currentText()]
        now = self.samples[-1][0]
        pts = [s for s in self.samples if now - s[0] <= span]
        xs = [s[0] - now for s in pts]
        self.rss_curve.setData(xs, [s[1] / MiB for s in pts])
        self.avail_curve.setData(xs, [s[2] / MiB for s in pts])
        v = [(x, s[3] / MiB) for x, s in zip(xs, pts) if s[3] is not None]
        if v:
            self.vram_curve.setData([a for a, _ in v], [b for _, b in v])
        self.avail_plot.setXRange(-span, 0, padding=0)
        for plot, col in ((self.rss_plot, 1), (self.avail_plot, 2)):       # from 0, so changes read as what they are
            top = max(s[col] for s in pts) / MiB
            plot.setYRange(0, top * 1.15 if top > 0 else 1, padding=0)
