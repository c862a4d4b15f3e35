"""The status bar: context gauge, engine state, and when the conversation was last saved."""
from __future__ import annotations

import time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar

from app.format import ago


class StatusBar(QStatusBar):
    def __init__(self, last_write, parent=None):
        """last_write: a callable giving the time.time() of the last store write, or None."""
        super().__init__(parent)
        self.last_write = last_write
        self.gauge = QProgressBar()
        self.gauge.setMaximumWidth(220)
        self.gauge.setRange(0, 1)
        self.gauge.setValue(0)
        self.gauge.setFormat("context: no model")
        self.gauge.setToolTip("Tokens of this conversation in the KV cache / the context length; when it is "
                              "full the oldest half is dropped (the system prompt is kept)")
        self.engine = QLabel("engine: stopped")
        self.engine.setToolTip("What the engine process is doing")
        self.server = QLabel("")
        self.server.setToolTip("The local server (View ▸ Local server panel): its address and the requests it "
                               "is answering now")
        self.saved = QLabel("")
        self.saved.setToolTip("When the conversation was last written to disk")
        self.addWidget(self.gauge)
        self.addWidget(self.engine)
        self.addPermanentWidget(self.server)
        self.addPermanentWidget(self.saved)
        self._timer = QTimer(self, interval=1000, timeout=self.refresh_saved)
        self._timer.start()

    def set_context(self, used: int, total: int) -> None:
        self.gauge.setFormat("context %v / %m")
        self.gauge.setRange(0, max(total, 1))
        self.gauge.setValue(min(used, max(total, 1)))

    def set_engine(self, state: str, detail: str = "") -> None:
        self.engine.setText(f"engine: {state}" + (f" ({detail})" if detail and state in ("loading", "busy") else ""))

    def set_server(self, text: str) -> None:
        self.server.setText(text)

    def refresh_saved(self) -> None:
        t = self.last_write()
        self.saved.setText(f"saved {ago(time.time() - t)}" if t else "")
