"""A conversation's own system prompt and sampling (temperature, top-p, top-k, min-p, repeat
penalty, seed, reply length), opened from the chat's header. Defaults come from Settings."""
from __future__ import annotations

from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFormLayout, QGroupBox, QLabel, QPlainTextEdit,
                               QPushButton, QVBoxLayout)

from app.dialogs.settings_dialog import _dspin, _spin

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed", "max_tokens")


def generate_fields(defaults: dict, own: dict | None) -> dict:
    """protocol.Generate's sampling fields: the conversation's own values over the defaults (unknown
    keys from older or newer stores are left out)."""
    merged = {**defaults, **(own or {})}
    return {k: merged[k] for k in SAMPLING_KEYS if k in merged}


def summary(system_prompt: str, sampling: dict) -> str:
    """'temp 0.8 · top-p 0.95 · top-k 40 · min-p 0.05 · seed random · ≤ 512 tokens'."""
    s = sampling
    parts = [f"temp {s.get('temperature', 0.8):g}", f"top-p {s.get('top_p', 0.95):g}", f"top-k {s.get('top_k', 40)}",
             f"min-p {s.get('min_p', 0.05):g}"]
    if s.get("repeat_penalty", 1.0) != 1.0:
        parts.append(f"repeat ×{s['repeat_penalty']:g}")
    parts.append(f"seed {s['seed']}" if s.get("seed") is not None else "seed random")
    parts.append(f"≤ {s.get('max_tokens', 512)} tokens")
    return " · ".join(parts)


class ChatSettingsDialog(QDialog):
    def __init__(self, system_prompt: str, sampling: dict, defaults: dict, parent=None):
        super().__init__(parent)
        self.setWindowTitle("System prompt and sampling")
        self.setMinimumWidth(520)
        self.defaults = dict(defaults)
        s = {**defaults, **sampling}
        lay = QVBoxLayout(self)
        box = QGroupBox("System prompt (this conversation)")
        b = QVBoxLayout(box)
        self.system = QPlainTextEdit(system_prompt)
        self.system.setPlaceholderText("e.g. You are a concise assistant. Answer in plain English.")
        self.system.setToolTip("Sent before the conversation as the system message; the model's template decides "
                               "how it is shown to the model. Changing it re-reads the conversation once.")
        self.system.setMinimumHeight(110)
        b.addWidget(self.system)
        lay.addWidget(box)

        box = QGroupBox("Sampling (this conversation)")
        f = QFormLayout(box)
        self.temperature = _dspin(0, 2, s["temperature"], 0.05, "Temperature: 0 always picks the likeliest token; "
                                  "higher is more varied")
        self.top_p = _dspin(0, 1, s["top_p"], 0.01, "Top-p: sample among the likeliest tokens that make up this "
                            "share of probability (1: off)")
        self.top_k = _spin(0, 1000, s["top_k"], "Top-k: sample among this many likeliest tokens (0: all)")
        self.min_p = _dspin(0, 1, s["min_p"], 0.01, "Min-p: drop tokens less likely than this share of the "
                            "likeliest one (0: off)")
        self.repeat_penalty = _dspin(0.5, 2, s["repeat_penalty"], 0.05, "Repeat penalty: above 1 discourages "
                                     "repeating the last 64 tokens (1: off)")
        seed = s.get("seed")
        self.seed = _spin(-1, 2 ** 31 - 1, -1 if seed is None else seed,
                          "Seed: the same seed and settings give the same reply; random: a new one each time",
                          "random")
        self.max_tokens = _spin(1, 32768, s["max_tokens"], "The most tokens one reply may have")
        for label, w in (("Temperature", self.temperature), ("Top-p", self.top_p), ("Top-k", self.top_k),
                         ("Min-p", self.min_p), ("Repeat penalty", self.repeat_penalty), ("Seed", self.seed),
                         ("Max reply tokens", self.max_tokens)):
            f.addRow(label, w)
        lay.addWidget(box)
        note = QLabel("Defaults for new conversations are in Settings.")
        note.setEnabled(False)
        lay.addWidget(note)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.reset_btn = QPushButton("Use defaults")
        self.reset_btn.setToolTip("Put the sampling fields back to the defaults from Settings (the system prompt stays)")
        self.reset_btn.clicked.connect(self.use_defaults)
        buttons.addButton(self.reset_btn, QDialogButtonBox.ButtonRole.ResetRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def use_defaults(self) -> None:
        d = self.defaults
        self.temperature.setValue(d["temperature"])
        self.top_p.setValue(d["top_p"])
        self.top_k.setValue(d["top_k"])
        self.min_p.setValue(d["min_p"])
        self.repeat_penalty.setValue(d["repeat_penalty"])
        self.seed.setValue(-1 if d.get("seed") is None else d["seed"])
        self.max_tokens.setValue(d["max_tokens"])

    def system_prompt(self) -> str:
        return self.system.toPlainText().strip()

    def sampling(self) -> dict:
        return {"temperature": round(self.temperature.value(), 2), "top_p": round(self.top_p.value(), 2),
                "top_k": self.top_k.value(), "min_p": round(self.min_p.value(), 2),
                "repeat_penalty": round(self.repeat_penalty.value(), 2),
                "seed": None if self.seed.value() < 0 else self.seed.value(), "max_tokens": self.max_tokens.value()}
