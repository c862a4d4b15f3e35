"""The bar across the top: the model (with its menu), how it is loaded, RAM and VRAM now, settings."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMenu, QToolButton, QWidget

from app.format import size


class TopBar(QWidget):
    settingsRequested = Signal()
    dockToggled = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(6, 2, 6, 2)
        title = QLabel("<b>Cellar</b>")
        self.model_btn = QToolButton()
        self.model_btn.setText("No model")
        self.model_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.model_btn.setToolTip("The loaded model; click to open another or a recent one")
        self.menu = QMenu(self)
        self.model_btn.setMenu(self.menu)
        self.load_info = QLabel("")
        self.load_info.setToolTip("ctx: the context length the model was loaded with (tokens); where the layers "
                                  "run; whether the weights are memory-mapped")
        self.ram = QLabel("RAM —")
        self.ram.setToolTip("Resident memory of the engine process now (its RSS)")
        self.vram = QLabel("VRAM —")
        self.vram.setToolTip("GPU memory in use on GPU 0 now, of its total (— without an NVIDIA GPU)")
        self.dock_btn = QToolButton(text="▥")
        self.dock_btn.setToolTip("Show or hide the telemetry panel")
        self.dock_btn.clicked.connect(self.dockToggled.emit)
        self.settings_btn = QToolButton(text="⚙")
        self.settings_btn.setToolTip("Settings")
        self.settings_btn.clicked.connect(self.settingsRequested.emit)
        for w in (title, self.model_btn, self.load_info):
            lay.addWidget(w)
        lay.addStretch(1)
        for w in (self.ram, QLabel("│"), self.vram, QLabel("│"), self.dock_btn, self.settings_btn):
            lay.addWidget(w)

    def set_model(self, path: str | None, n_ctx: int = 0, options: dict | None = None) -> None:
        if not path:
            self.model_btn.setText("No model")
            self.load_info.setText("")
            return
        o = options or {}
        self.model_btn.setText(Path(path).stem)
        where = f"GPU {o['gpu_layers']} layers" if o.get("gpu_layers") else "CPU"
        self.load_info.setText(f"ctx {n_ctx} · {where} · {'mmap' if o.get('mmap', True) else 'no mmap'}"
                               + (" · mlock" if o.get("mlock") else ""))

    def set_memory(self, rss: int, vram: list | None) -> None:
        self.ram.setText(f"RAM {size(rss)}")
        self.vram.setText(f"VRAM {size(vram[0]['used'])}" if vram else "VRAM —")
