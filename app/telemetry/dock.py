"""The right dock: memory graphs, the KV cell map, and the last load / reply figures."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDockWidget, QLabel, QScrollArea, QVBoxLayout, QWidget

from app.telemetry.graphs import MemoryGraphs
from app.telemetry.kv_map import FREE, SEQ_COLOURS, SHARED, KVCellMap


class TelemetryDock(QDockWidget):
    def __init__(self, parent=None):
        super().__init__("Telemetry", parent)
        self.setObjectName("telemetry_dock")
        body = QWidget()
        lay = QVBoxLayout(body)
        self.graphs = MemoryGraphs()
        lay.addWidget(self.graphs)
        self.kv_title = QLabel("<b>KV cache</b>")
        self.kv_title.setToolTip("Cells of the KV cache in use / cells allocated (one cell holds one token's "
                                 "keys and values for every layer)")
        lay.addWidget(self.kv_title)
        self.kv_map = KVCellMap()
        lay.addWidget(self.kv_map)
        self.legend = QLabel(f"<span style='color:{SEQ_COLOURS[0]}'>■</span> this chat &nbsp; "
                             f"<span style='color:{SEQ_COLOURS[1]}'>■</span> other &nbsp; "
                             f"<span style='color:{SHARED}'>■</span> shared &nbsp; "
                             f"<span style='color:{FREE}'>■</span> free")
        self.legend.setWordWrap(True)
        self.legend.setToolTip("This chat: sequence 0, the conversation the engine answered last. Other: another "
                               "sequence. Shared: cells several sequences hold. A square partly filled is a block "
                               "of cells partly in use")
        lay.addWidget(self.legend)
        self.swa_legend = QLabel("Sliding window: <b>outlined</b> cells are inside the window the next token "
                                 "sees; <i>hatched</i> ones are outside it, kept until overwritten.")
        self.swa_legend.setWordWrap(True)
        self.swa_legend.hide()
        lay.addWidget(self.swa_legend)
        self.figures = QLabel("Load — · n_eval —")
        self.figures.setToolTip("Load: seconds the last model load took. n_eval: prompt tokens the last reply "
                                "actually evaluated (the rest came from the KV cache)")
        lay.addWidget(self.figures)
        lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(body)
        body.setMinimumWidth(0)
        self.setWidget(scroll)
        self._load_s: float | None = None
        self._n_eval: int | None = None

    def set_kv(self, snap: dict) -> None:
        self.kv_map.set_snapshot(snap)
        self.swa_legend.setVisible(any(c.get("swa_window") for c in self.kv_map.caches()))
        self.kv_title.setText(f"<b>KV cache</b> &nbsp; {snap.get('used', 0)} / {snap.get('total', 0)}")

    def set_load_s(self, s: float) -> None:
        self._load_s = s
        self._update_figures()

    def set_n_eval(self, n: int) -> None:
        self._n_eval = n
        self._update_figures()

    def _update_figures(self) -> None:
        load = f"{self._load_s:.2f} s" if self._load_s is not None else "—"
        ne = str(self._n_eval) if self._n_eval is not None else "—"
        self.figures.setText(f"Load {load} · n_eval {ne}")
