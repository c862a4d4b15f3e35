"""From a file (dropped, opened, recent, or a known model fetched) to a loaded model:
check it is GGUF, show the preview dialog, send Load, follow the progress, report plainly."""
from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app.background import run_in_thread
from app.dialogs.load_preview import LoadPreviewDialog
from app.model_files import error_line, open_preview
from app.pull_flow import LABELS, PullFlow
from engine import protocol as P

LOAD_ERRORS = {P.ErrorKind.BAD_MODEL_FILE.value, P.ErrorKind.UNSUPPORTED.value, P.ErrorKind.OUT_OF_MEMORY.value,
               P.ErrorKind.BAD_INPUT.value, P.ErrorKind.INTERNAL.value, P.ErrorKind.ENGINE_CRASHED.value}


class LoadFlow(QObject):
    notice = Signal(str)                     # a one-line message for the user
    previewShown = Signal(object)            # the LoadPreviewDialog
    pullState = Signal(object, str)          # known-model name or None when done, message

    def __init__(self, window, bridge, settings_of):
        super().__init__(window)
        self.window, self.bridge, self.settings_of = window, bridge, settings_of
        self.dialog: LoadPreviewDialog | None = None
        self.loading_path: str | None = None
        self.pulls = PullFlow(self)
        self.pulls.finished.connect(self._pulled)
        bridge.loadProgress.connect(self._progress)
        bridge.modelLoaded.connect(self._loaded)
        bridge.error.connect(self._error)

    # ---------------------------------------------------------------- preview
    def open_path(self, path: str) -> None:
        """Look at the file off the GUI thread; then the preview dialog, or one line saying what is wrong."""
        run_in_thread(lambda: open_preview(path), self._show_preview,
                      lambda e: self.notice.emit(error_line(e)))

    def _show_preview(self, preview) -> None:
        if self.dialog is not None:
            self.dialog.reject()
        d = LoadPreviewDialog(preview, self.settings_of(), self.window)
        d.loadRequested.connect(self.load)
        d.finished.connect(lambda _r, d=d: self._closed(d))
        self.dialog = d
        d.open()
        self.previewShown.emit(d)

    def _closed(self, d) -> None:
        if self.dialog is d:
            self.dialog = None

    # ---------------------------------------------------------------- loading
    def load(self, path: str, fields: dict) -> bool:
        self.loading_path = path
        return self.bridge.send(P.Load(path, **fields))

    def _progress(self, fraction: float, message: str) -> None:
        if self.dialog is not None:
            self.dialog.on_progress(fraction, message)

    def _loaded(self, ev) -> None:
        self.loading_path = None
        if self.dialog is not None:
            self.dialog.on_loaded()

    def _error(self, kind: str, message: str, request_id) -> None:
        if request_id is not None or self.loading_path is None or kind not in LOAD_ERRORS:
            return
        self.loading_path = None
        if self.dialog is not None and self.dialog.loading:
            self.dialog.on_failed(message)
        else:
            self.notice.emit(message)

    # ---------------------------------------------------------------- known models
    def pull(self, name: str) -> None:
        """Fetch a known model (engine.pull, no torch) off the GUI thread with progress, then preview it."""
        if self.pulls.busy:
            self.notice.emit(f"{LABELS.get(self.pulls.name, self.pulls.name)} is still downloading; wait for it "
                             "or cancel it first")
            return
        self.pulls.pull(name)
        self.pullState.emit(name, "")

    def _pulled(self, name: str, path, message: str) -> None:
        if path is None:
            self.pullState.emit(None, message or f"Download of {LABELS.get(name, name)} cancelled; nothing was kept.")
            if message:
                self.notice.emit(message)
            return
        self.pullState.emit(None, "")
        self.open_path(str(path))
