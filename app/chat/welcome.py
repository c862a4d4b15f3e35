"""Shown in place of the thread when no model is loaded: the known small models to fetch, or drop a file."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

KNOWN_MODELS = (("smollm2", "SmolLM2 135M Instruct", "98 MB, chat, quick on any CPU"),
                ("gemma3", "Gemma 3 270M", "253 MB, sliding-window attention"))


class WelcomePanel(QWidget):
    pullRequested = Signal(str)          # known model name
    openRequested = Signal()             # File ▸ Open
    modelChosen = Signal(str)            # a path already on disk

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.addStretch(1)
        title = QLabel("<h2>No model loaded</h2>")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(title)
        hint = QLabel("Drop a <b>.gguf</b> file here, open one from disk, or get a small model to start with.")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        hint.setWordWrap(True)
        lay.addWidget(hint)
        self.buttons: dict[str, QPushButton] = {}
        for name, label, blurb in KNOWN_MODELS:
            b = QPushButton(f"Get {label}  ({blurb})")
            b.clicked.connect(lambda _=False, n=name: self.pullRequested.emit(n))
            self.buttons[name] = b
            lay.addWidget(b, 0, Qt.AlignmentFlag.AlignHCenter)
        open_btn = QPushButton("Open a .gguf file…")
        open_btn.clicked.connect(self.openRequested.emit)
        lay.addWidget(open_btn, 0, Qt.AlignmentFlag.AlignHCenter)
        self.progress: QWidget | None = None          # a PullProgress, set by set_progress_widget
        self.status = QLabel("")
        self.status.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.status.setWordWrap(True)
        self._progress_at = lay.count()
        lay.addWidget(self.status)
        lay.addStretch(2)

    def set_progress_widget(self, w: QWidget) -> None:
        self.progress = w
        self.layout().insertWidget(self._progress_at, w)

    def set_cached(self, name: str, path: str | None) -> None:
        """A known model already on disk loads straight away instead of downloading."""
        b = self.buttons[name]
        label = dict((n, l) for n, l, _ in KNOWN_MODELS)[name]
        if path:
            b.setText(f"Load {label}  (downloaded)")
            try:
                b.clicked.disconnect()
            except (RuntimeError, TypeError):
                pass
            b.clicked.connect(lambda _=False, p=path: self.modelChosen.emit(p))

    def set_pulling(self, name: str | None, message: str = "") -> None:
        busy = name is not None
        for b in self.buttons.values():
            b.setEnabled(not busy)
        self.status.setText(message)
