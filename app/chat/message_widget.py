"""One message of the thread: header (role, speed, branch arrows), Markdown body, actions."""
from __future__ import annotations

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QPalette, QTextBlockFormat, QTextCursor, QTextFormat
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QSizePolicy,
                               QTextBrowser, QToolButton, QVBoxLayout, QWidget)

from app.chat.markdown import answer_code, reply_markdown


class MarkdownView(QTextBrowser):
    """A QTextBrowser as tall as its text (the thread scrolls, not the message)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.viewport().setAutoFillBackground(False)
        self.setStyleSheet("QTextBrowser { background: transparent; }")
        self.document().documentLayout().documentSizeChanged.connect(self._fit)

    def set_markdown(self, text: str) -> None:
        """Markdown, with code blocks shaded so they read as code."""
        self.setMarkdown(text)
        shade = self.palette().color(QPalette.ColorRole.AlternateBase).darker(110)
        cursor = QTextCursor(self.document())
        block = self.document().begin()
        while block.isValid():
            if block.blockFormat().hasProperty(QTextFormat.Property.BlockCodeFence):
                fmt = QTextBlockFormat()
                fmt.setBackground(shade)
                cursor.setPosition(block.position())
                cursor.mergeBlockFormat(fmt)
            block = block.next()

    def _fit(self, *_):
        h = int(self.document().size().height()) + 4
        if h != self.height():
            self.setFixedHeight(max(h, 20))

    def resizeEvent(self, e):
        super().resizeEvent(e)
        self.document().setTextWidth(self.viewport().width())
        self._fit()

    def sizeHint(self) -> QSize:
        return QSize(400, int(self.document().size().height()) + 4)


class MessageWidget(QFrame):
    regenerate = Signal(str)             # message id
    editSubmitted = Signal(str, str)     # message id, new text
    branchStep = Signal(str, int)        # message id, -1 / +1

    def __init__(self, message_id: str, role: str, text: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.message_id, self.role, self._text = message_id, role, text
        self.setObjectName("message_" + role)
        self.setFrameShape(QFrame.Shape.StyledPanel if role == "user" else QFrame.Shape.NoFrame)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 6, 10, 6)
        lay.setSpacing(2)

        head = QHBoxLayout()
        self.role_label = QLabel(f"<b>{role}</b>")
        self.stats_label = QLabel("")
        self.stats_label.setStyleSheet("color: palette(mid);")
        self.prev_btn = QToolButton(text="◀", toolTip="Previous version of this message")
        self.next_btn = QToolButton(text="▶", toolTip="Next version of this message")
        self.branch_label = QLabel("")
        self.branch_label.setToolTip("Which version of this message is shown, of how many (edits and "
                                     "regenerations are kept as versions)")
        self.prev_btn.clicked.connect(lambda: self.branchStep.emit(self.message_id, -1))
        self.next_btn.clicked.connect(lambda: self.branchStep.emit(self.message_id, +1))
        for w in (self.role_label, self.stats_label):
            head.addWidget(w)
        head.addStretch(1)
        for w in (self.prev_btn, self.branch_label, self.next_btn):
            head.addWidget(w)
        lay.addLayout(head)
        self.set_branch(1, 1)

        self.body = MarkdownView()
        self.body.anchorClicked.connect(self._link)
        lay.addWidget(self.body)
        self.editor = QPlainTextEdit()
        self.editor.hide()
        lay.addWidget(self.editor)

        acts = QHBoxLayout()
        self.regen_btn = QPushButton("↻ Regenerate", toolTip="Write this reply again (the old one is kept)")
        self.edit_btn = QPushButton("✎ Edit", toolTip="Change this message and send it again (the old one is kept)")
        self.copy_btn = QPushButton("Copy", toolTip="Copy this message's text")
        self.save_btn = QPushButton("Send", toolTip="Send the edited message as a new version")
        self.cancel_btn = QPushButton("Cancel")
        self.regen_btn.clicked.connect(lambda: self.regenerate.emit(self.message_id))
        self.edit_btn.clicked.connect(self.start_edit)
        self.copy_btn.clicked.connect(lambda: QGuiApplication.clipboard().setText(self._text))
        self.save_btn.clicked.connect(self.submit_edit)
        self.cancel_btn.clicked.connect(self.end_edit)
        for b in (self.regen_btn, self.edit_btn, self.copy_btn, self.save_btn, self.cancel_btn):
            b.setFlat(True)
            acts.addWidget(b)
        acts.addStretch(1)
        lay.addLayout(acts)
        self.regen_btn.setVisible(role == "assistant")
        self.edit_btn.setVisible(role == "user")
        self.save_btn.hide()
        self.cancel_btn.hide()

        self._render_timer = QTimer(self, singleShot=True, interval=40, timeout=self._render)
        self._render()

    # ---------------------------------------------------------------- content
    @property
    def text(self) -> str:
        return self._text

    def set_text(self, text: str, now: bool = False) -> None:
        self._text = text
        if now:
            self._render()
        elif not self._render_timer.isActive():
            self._render_timer.start()

    def append(self, piece: str) -> None:
        self.set_text(self._text + piece)

    def _render(self) -> None:
        self._render_timer.stop()
        self.body.set_markdown((reply_markdown(self._text) or "…") if self._text else "…")

    def _link(self, url) -> None:
        if url.scheme() == "copy":
            blocks = answer_code(self._text)
            i = int(url.path() or 0)
            if i < len(blocks):
                QGuiApplication.clipboard().setText(blocks[i])

    def set_stats(self, stats: dict) -> None:
        parts, tips = [], []
        if stats.get("tok_s"):
            parts.append(f"{stats['tok_s']:.1f} tok/s")
            tips.append("tok/s: tokens generated per second for this reply, prompt processing excluded")
        if stats.get("ttft_s"):
            parts.append(f"TTFT {stats['ttft_s']:.2f} s")
            tips.append("TTFT: seconds from sending to the first token of the reply")
        if stats.get("n_tokens"):
            parts.append(f"{stats['n_tokens']} tok")
            tips.append("tok: tokens in this reply")
        if stats.get("stop_reason") in ("cancelled", "length", "error"):
            parts.append({"cancelled": "stopped", "length": "cut at the token limit",
                          "error": "interrupted"}[stats["stop_reason"]])
        if stats.get("left_out"):
            n = stats["left_out"]
            parts.append(f"{n} earlier message{'s' if n != 1 else ''} left out")
            tips.append(f"The conversation outgrew the model's context: the model did not see its {n} oldest "
                        f"message{'s' if n != 1 else ''} for this reply (they are kept here). Load the model with "
                        "a larger context to keep more.")
        if stats.get("error"):
            tips.append(stats["error"])
        self.stats_label.setText(" · ".join(parts))
        self.stats_label.setToolTip("\n".join(tips))

    def set_branch(self, index: int, total: int) -> None:
        """index is 1-based."""
        self._branch = (index, total)
        busy = getattr(self, "_busy", False)
        many = total > 1
        for w in (self.prev_btn, self.next_btn, self.branch_label):
            w.setVisible(many)
        self.branch_label.setText(f"{index}/{total}")
        self.prev_btn.setEnabled(index > 1 and not busy)
        self.next_btn.setEnabled(index < total and not busy)

    def set_busy(self, busy: bool) -> None:
        """While a reply streams, actions that would start another wait."""
        self._busy = busy
        self.regen_btn.setEnabled(not busy)
        self.edit_btn.setEnabled(not busy)
        self.set_branch(*self._branch)

    # ---------------------------------------------------------------- editing
    def start_edit(self) -> None:
        self.editor.setPlainText(self._text)
        self.editor.setFixedHeight(max(60, min(240, self.body.height() + 30)))
        self.body.hide()
        self.editor.show()
        for b in (self.edit_btn, self.copy_btn):
            b.hide()
        self.save_btn.show()
        self.cancel_btn.show()
        self.editor.setFocus()

    def submit_edit(self) -> None:
        text = self.editor.toPlainText().strip()
        self.end_edit()
        if text:
            self.editSubmitted.emit(self.message_id, text)

    def end_edit(self) -> None:
        self.editor.hide()
        self.body.show()
        self.save_btn.hide()
        self.cancel_btn.hide()
        self.copy_btn.show()
        self.edit_btn.setVisible(self.role == "user")
