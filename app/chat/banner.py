"""A banner above the input: what went wrong with the engine, and a button to put it right."""
from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton


class Banner(QFrame):
    action = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("banner")
        self.setStyleSheet("#banner { background: #7a2020; border-radius: 6px; } "
                           "#banner QLabel { color: white; }")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 6, 6, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.button = QPushButton("Restart engine")
        self.button.clicked.connect(self.action.emit)
        lay.addWidget(self.label, 1)
        lay.addWidget(self.button)
        self.hide()

    def show_message(self, text: str, button: str | None = "Restart engine") -> None:
        self.label.setText(text)
        self.button.setVisible(button is not None)
        if button:
            self.button.setText(button)
        self.show()
