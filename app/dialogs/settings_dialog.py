"""The settings dialog: loading options (a change needs a reload), sampling defaults, theme."""
from __future__ import annotations

from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout,
                               QGroupBox, QSpinBox, QVBoxLayout)

from app.settings import KV_TYPES, THEMES, AppSettings


def _spin(lo: int, hi: int, value: int, tip: str, special: str | None = None, step: int = 1) -> QSpinBox:
    w = QSpinBox()
    w.setRange(lo, hi)
    w.setSingleStep(step)
    if special:
        w.setSpecialValueText(special)
    w.setValue(value)
    w.setToolTip(tip)
    return w


def _dspin(lo: float, hi: float, value: float, step: float, tip: str) -> QDoubleSpinBox:
    w = QDoubleSpinBox()
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setDecimals(2)
    w.setValue(value)
    w.setToolTip(tip)
    return w


class SettingsDialog(QDialog):
    def __init__(self, settings: AppSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        s = settings
        self.original = settings
        lay = QVBoxLayout(self)

        load = QGroupBox("Loading (a change reloads the model)")
        f = QFormLayout(load)
        self.mmap = QCheckBox("Map the file (mmap)")
        self.mmap.setChecked(s.mmap)
        self.mmap.setToolTip("On: weights are read from the page cache as needed (fast load, shared). "
                             "Off: the whole file is read into private memory")
        self.mlock = QCheckBox("Lock weights in RAM (mlock)")
        self.mlock.setChecked(s.mlock)
        self.mlock.setToolTip("Pin the weights so the system never swaps them out (may be refused by the OS)")
        self.gpu = QCheckBox("Offload layers to the GPU")
        self.gpu.setChecked(s.gpu_offload)
        self.gpu.setToolTip("Put some layers' weights and KV cache on an NVIDIA GPU")
        self.gpu_layers = _spin(-1, 999, -1 if s.gpu_layers is None else s.gpu_layers,
                                "GPU layers: how many layers go to the GPU; auto: as many as fit", "auto")
        self.ctx = _spin(256, 1 << 20, s.ctx, "Context length in tokens: the most the conversation can hold",
                         step=256)
        self.batch = _spin(1, 8192, s.batch, "Prompt tokens evaluated per step while reading the prompt", step=64)
        self.kv_type = QComboBox()
        self.kv_type.addItems(list(KV_TYPES))
        self.kv_type.setCurrentText(s.kv_type)
        self.kv_type.setToolTip("Number format of the KV cache: q8_0 takes about half the memory of f16")
        for label, w in (("", self.mmap), ("", self.mlock), ("", self.gpu), ("GPU layers", self.gpu_layers),
                         ("Context", self.ctx), ("Batch", self.batch), ("KV cache type", self.kv_type)):
            f.addRow(label, w)
        lay.addWidget(load)

        run = QGroupBox("Replies (apply at once)")
        f = QFormLayout(run)
        self.threads = _spin(0, 256, s.threads or 0, "CPU threads the engine uses; auto: the engine decides", "auto")
        self.temperature = _dspin(0, 2, s.temperature, 0.05, "Temperature: 0 always picks the likeliest token; "
                                  "higher is more varied")
        self.top_k = _spin(0, 1000, s.top_k, "Top-k: sample among this many likeliest tokens (0: all)")
        self.top_p = _dspin(0, 1, s.top_p, 0.01, "Top-p: sample among the likeliest tokens that make up this "
                            "share of probability")
        self.min_p = _dspin(0, 1, s.min_p, 0.01, "Min-p: drop tokens less likely than this share of the "
                            "likeliest one")
        self.repeat_penalty = _dspin(0.5, 2, s.repeat_penalty, 0.05, "Repeat penalty: above 1 discourages "
                                     "repeating recent tokens")
        self.max_tokens = _spin(1, 32768, s.max_tokens, "The most tokens one reply may have")
        self.theme = QComboBox()
        self.theme.addItems(list(THEMES))
        self.theme.setCurrentText(s.theme)
        self.theme.setToolTip("system follows the desktop's light or dark setting")
        for label, w in (("Threads", self.threads), ("Temperature", self.temperature), ("Top-k", self.top_k),
                         ("Top-p", self.top_p), ("Min-p", self.min_p), ("Repeat penalty", self.repeat_penalty),
                         ("Max reply tokens", self.max_tokens), ("Theme", self.theme)):
            f.addRow(label, w)
        lay.addWidget(run)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def result_settings(self) -> AppSettings:
        s = self.original.copy()
        s.mmap, s.mlock, s.gpu_offload = self.mmap.isChecked(), self.mlock.isChecked(), self.gpu.isChecked()
        s.gpu_layers = None if self.gpu_layers.value() < 0 else self.gpu_layers.value()
        s.ctx, s.batch, s.kv_type = self.ctx.value(), self.batch.value(), self.kv_type.currentText()
        s.threads = self.threads.value() or None
        s.temperature, s.top_k = self.temperature.value(), self.top_k.value()
        s.top_p, s.min_p = self.top_p.value(), self.min_p.value()
        s.repeat_penalty, s.max_tokens = self.repeat_penalty.value(), self.max_tokens.value()
        s.theme = self.theme.currentText()
        return s
