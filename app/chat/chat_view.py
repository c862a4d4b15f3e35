"""The middle of the window: the thread of messages, the engine banner, and the input."""
from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QHBoxLayout, QPushButton, QScrollArea, QStackedWidget, QVBoxLayout,
                               QWidget)

from app.chat.banner import Banner
from app.chat.chat_header import ChatHeader
from app.chat.input_box import InputBox
from app.chat.message_widget import MessageWidget
from app.chat.welcome import WelcomePanel


class ChatView(QWidget):
    sendRequested = Signal(str)
    stopRequested = Signal()
    regenerateRequested = Signal(str)
    editRequested = Signal(str, str)
    branchRequested = Signal(str, int)

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        self.header = ChatHeader()
        lay.addWidget(self.header)
        self.stack = QStackedWidget()
        self.welcome = WelcomePanel()
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.thread_box = QWidget()
        self.thread_layout = QVBoxLayout(self.thread_box)
        self.thread_layout.setSpacing(8)
        self.thread_layout.addStretch(1)
        self.scroll.setWidget(self.thread_box)
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(self.scroll)
        lay.addWidget(self.stack, 1)
        self.stack.currentChanged.connect(lambda _i: self.header.setVisible(self.stack.currentWidget() is self.scroll))
        self.header.hide()

        self.banner = Banner()
        lay.addWidget(self.banner)
        row = QHBoxLayout()
        self.input = InputBox()
        self.input.submitted.connect(self._submit)
        self.send_btn = QPushButton("Send")
        self.send_btn.setToolTip("Send the message (Enter)")
        self.send_btn.clicked.connect(lambda: self._submit(self.input.toPlainText().strip()))
        self.stop_btn = QPushButton("■ Stop")
        self.stop_btn.setToolTip("Stop the reply (Esc); what was written so far is kept")
        self.stop_btn.clicked.connect(self.stopRequested.emit)
        self.stop_btn.hide()
        row.addWidget(self.input, 1)
        row.addWidget(self.send_btn, 0, Qt.AlignmentFlag.AlignBottom)
        row.addWidget(self.stop_btn, 0, Qt.AlignmentFlag.AlignBottom)
        lay.addLayout(row)
        self.widgets: dict[str, MessageWidget] = {}
        self._stick = True
        self.scroll.verticalScrollBar().rangeChanged.connect(self._follow)
        self.scroll.verticalScrollBar().valueChanged.connect(self._track_bottom)

    # ---------------------------------------------------------------- input
    def _submit(self, text: str) -> None:
        if text and self.send_btn.isVisible() and self.send_btn.isEnabled():
            self.input.clear()
            self.sendRequested.emit(text)

    def set_generating(self, on: bool) -> None:
        self.send_btn.setVisible(not on)
        self.stop_btn.setVisible(on)
        for w in self.widgets.values():
            w.set_busy(on)

    def show_welcome(self, on: bool) -> None:
        """No model: the welcome panel instead of the thread, and the input waits."""
        self.stack.setCurrentWidget(self.welcome if on else self.scroll)
        self.input.setEnabled(not on)
        self.send_btn.setEnabled(not on)
        self.input.setPlaceholderText("Load a model to start chatting" if on else
                                      "Message…   (Enter sends, Shift+Enter for a new line)")

    # ---------------------------------------------------------------- thread
    def clear(self) -> None:
        for w in self.widgets.values():
            w.setParent(None)
            w.deleteLater()
        self.widgets.clear()

    def add_message(self, message_id: str, role: str, text: str, *, stats: dict | None = None,
                    branch: tuple[int, int] = (1, 1)) -> MessageWidget:
        w = MessageWidget(message_id, role, text)
        w.regenerate.connect(self.regenerateRequested.emit)
        w.editSubmitted.connect(self.editRequested.emit)
        w.branchStep.connect(self.branchRequested.emit)
        if stats:
            w.set_stats(stats)
        w.set_branch(*branch)
        self.thread_layout.insertWidget(self.thread_layout.count() - 1, w)
        self.widgets[message_id] = w
        self._stick = True
        return w

    def widget(self, message_id: str) -> MessageWidget | None:
        return self.widgets.get(message_id)

    def _track_bottom(self, value: int) -> None:
        bar = self.scroll.verticalScrollBar()
        self._stick = value >= bar.maximum() - 24

    def _follow(self, _min: int, maximum: int) -> None:
        """Keep the newest text in view while it streams, unless the user scrolled up to read."""
        if self._stick:
            QTimer.singleShot(0, lambda: self.scroll.verticalScrollBar().setValue(
                self.scroll.verticalScrollBar().maximum()))
