"""The strip above the thread: the conversation's system prompt and sampling at a glance, and the
button that edits them."""
from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from app.dialogs.chat_settings import summary


class ElidedLabel(QLabel):
    """One line that ends in … when it does not fit; `full` is the whole text."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.full = ""
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def set_full(self, text: str) -> None:
        self.full = text
        self._elide()
        self.updateGeometry()

    def sizeHint(self) -> QSize:
        return QSize(self.fontMetrics().horizontalAdvance(self.full) + 6, super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:
        return QSize(20, super().minimumSizeHint().height())

    def _elide(self) -> None:
        self.setText(self.fontMetrics().elidedText(self.full, Qt.TextElideMode.ElideRight, max(20, self.width())))

    def resizeEvent(self, e):
        super().resizeEvent(e)
        self._elide()


class ChatHeader(QWidget):
    editRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 0, 4, 2)
        self.prompt = ElidedLabel()
        self.prompt.setMinimumWidth(self.prompt.fontMetrics().horizontalAdvance("No system prompt") + 8)
        self.prompt.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)   # shares the squeeze
        self.prompt.setToolTip("This conversation's system prompt, sent before its messages")
        self.figures = ElidedLabel()
        self.figures.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.figures.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)   # whole when it fits
        self.figures.setEnabled(False)
        self.figures.setToolTip("This conversation's sampling: temperature, top-p, top-k, min-p, repeat penalty, "
                                "seed and the most tokens a reply may have")
        self.edit_btn = QPushButton("Prompt && sampling…")
        self.edit_btn.setToolTip("Edit this conversation's system prompt and sampling settings")
        self.edit_btn.clicked.connect(self.editRequested.emit)
        lay.addWidget(self.prompt, 1)
        lay.addWidget(self.figures)
        lay.addWidget(self.edit_btn)
        self.set_values("", {})

    def set_values(self, system_prompt: str, sampling: dict) -> None:
        one_line = " ".join(system_prompt.split())
        self.prompt.set_full(f"System: {one_line}" if one_line else "No system prompt")
        self.prompt.setToolTip(system_prompt or "No system prompt: the model's template decides what, if anything, "
                               "comes before the conversation")
        self.figures.set_full(summary(system_prompt, sampling))
        self.figures.setToolTip("This conversation's sampling: " + self.figures.full)
