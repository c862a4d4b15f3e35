"""Fetching a known model from the app: engine.pull on a short-lived thread, its progress relayed to
the GUI thread as signals, and a Cancel that stops the download (nothing is kept)."""
from __future__ import annotations

import threading

from PySide6.QtCore import QObject, Signal

from app.background import run_in_thread
from app.format import MiB
from app.model_files import error_line
from engine.errors import Cancelled

LABELS = {"smollm2": "SmolLM2 135M", "gemma3": "Gemma 3 270M"}


def progress_text(name: str, p) -> str:
    """One line for a PullProgress: 'Downloading SmolLM2 135M: 45% · 40 of 89 MiB · 12.3 MiB/s'."""
    label = LABELS.get(name, name)
    if p is None:
        return f"Downloading {label}: starting pip…"
    if p.stage == "verify":
        return f"Checking {label} ({p.done / MiB:.0f} MiB downloaded): reassembling and verifying its sha256…"
    rate = f" · {p.bytes_per_s / MiB:.1f} MiB/s" if p.bytes_per_s > 0 else ""
    if p.fraction is None:
        return f"Downloading {label}: {p.done / MiB:.1f} MiB{rate}"
    return f"Downloading {label}: {p.fraction * 100:.0f}% · {p.done / MiB:.1f} of {p.total / MiB:.1f} MiB{rate}"


class PullFlow(QObject):
    started = Signal(str)                    # known-model name
    progress = Signal(str, object)           # name, engine.pull.PullProgress
    finished = Signal(str, object, str)      # name, path (None when it failed or was cancelled), message

    def __init__(self, parent=None):
        super().__init__(parent)
        self.name: str | None = None
        self.last = None                     # the latest PullProgress
        self._cancel = threading.Event()
        self.progress.connect(self._note)

    def _note(self, _name: str, p) -> None:
        self.last = p

    @property
    def busy(self) -> bool:
        return self.name is not None

    def pull(self, name: str) -> bool:
        """Start fetching name off the GUI thread; False when a download is already running."""
        if self.busy:
            return False
        from engine.pull import pull
        self.name, self.last = name, None
        self._cancel = threading.Event()
        cancel = self._cancel
        self.started.emit(name)
        run_in_thread(lambda: pull(name, progress=lambda p: self.progress.emit(name, p), cancel=cancel.is_set),
                      lambda path: self._done(name, path, ""),
                      lambda e: self._done(name, None, "" if isinstance(e, Cancelled) else error_line(e)))
        return True

    def cancel(self) -> None:
        self._cancel.set()

    def _done(self, name: str, path, message: str) -> None:
        self.name = None
        self.finished.emit(name, path, message)
