"""A download in progress, as a bar with its figures and a Cancel button (the welcome panel and the
status bar each show one while a known model is being fetched)."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from app.pull_flow import PullFlow, progress_text


class PullProgress(QWidget):
    def __init__(self, flow: PullFlow, compact: bool = False, parent=None):
        """compact: bar and button on one line, the figures in the bar's tooltip (for the status bar)."""
        super().__init__(parent)
        self.flow, self.compact = flow, compact
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(compact)
        self.bar.setMaximumWidth(180 if compact else 420)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop the download; nothing is kept")
        self.cancel_btn.clicked.connect(flow.cancel)
        if compact:
            self.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)
            self.cancel_btn.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)
            self.bar.setMinimumWidth(160)
            lay = QHBoxLayout(self)
            lay.setContentsMargins(0, 0, 0, 0)
            lay.addWidget(self.bar)
            lay.addWidget(self.cancel_btn)
        else:
            lay = QVBoxLayout(self)
            row = QHBoxLayout()
            row.addStretch(1)
            row.addWidget(self.bar, 1)
            row.addWidget(self.cancel_btn)
            row.addStretch(1)
            lay.addLayout(row)
            lay.addWidget(self.label)
        flow.started.connect(self._started)
        flow.progress.connect(self._progress)
        flow.finished.connect(self._finished)
        self.hide()

    def text(self) -> str:
        return self.label.text()

    def _started(self, name: str) -> None:
        self.bar.setRange(0, 0)                    # busy until pip says how much there is
        self.label.setText(progress_text(name, None))
        self.cancel_btn.setEnabled(True)
        self.show()

    def _progress(self, name: str, p) -> None:
        text = progress_text(name, p)
        self.label.setText(text)
        self.bar.setToolTip(text)
        if p.stage == "verify":
            self.bar.setRange(0, 0)
            self.bar.setFormat("checking")
            self.cancel_btn.setEnabled(False)
        elif p.fraction is not None:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(p.fraction * 1000))
            self.bar.setFormat(f"{p.fraction * 100:.0f}%  {p.bytes_per_s / (1 << 20):.1f} MiB/s")

    def _finished(self, _name: str, _path, _message: str) -> None:
        self.hide()
