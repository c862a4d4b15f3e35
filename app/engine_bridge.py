"""EngineBridge: the engine client as a QObject with one Qt signal per kind of event.

The client's reader thread only appends to a deque and pokes the GUI thread with a queued signal;
the GUI thread drains the deque and emits the typed signals. Nothing here blocks the GUI thread:
sending a request is a pipe write, and start/stop/restart (which wait for a process) run on a
short-lived thread. No torch here: the engine lives in its own process.
"""
from __future__ import annotations

import collections
import threading
import uuid

from PySide6.QtCore import QObject, Qt, Signal, Slot

from engine import protocol as P
from engine.client import EngineClient
from engine.errors import CellarError


class EngineBridge(QObject):
    event = Signal(object)                     # every event, for whoever wants them all
    stateChanged = Signal(str, str)            # EngineState value, detail
    crashed = Signal(str, object, object)      # detail, exit code, signal name (or None)
    loadProgress = Signal(float, str)
    modelLoaded = Signal(object)               # P.ModelLoaded
    memoryPlan = Signal(object)                # dict: the plan (object, not dict: see tests/app/test_signal_types.py)
    token = Signal(str, int, str)              # request_id, token id, text
    generationDone = Signal(object)            # P.GenerationDone
    telemetry = Signal(object)                 # P.Telemetry
    kvSnapshot = Signal(object)                # dict: the KV snapshot
    sessionSaved = Signal(object)
    sessionRestored = Signal(object)
    error = Signal(str, str, object)           # ErrorKind value, one-line message, request_id or None
    _wake = Signal()

    def __init__(self, parent: QObject | None = None, *, client: EngineClient | None = None):
        super().__init__(parent)
        self._pending: collections.deque = collections.deque()
        self._scheduled = False
        self._flag_lock = threading.Lock()
        self._wake.connect(self._drain, Qt.ConnectionType.QueuedConnection)
        self.client = client or EngineClient()
        self.client.on_event = self._arrived

    @property
    def state(self) -> P.EngineState:
        return self.client.state

    # ------------------------------------------------------------ requests (GUI thread, non-blocking)
    def send(self, request) -> bool:
        """Send a request; on a dead engine, emit error(ENGINE_CRASHED) instead of raising."""
        try:
            self.client.send(request)
            return True
        except CellarError as e:
            self.error.emit(e.kind.value, e.message, getattr(request, "request_id", None))
            return False

    def cancel(self, request_id: str | None = None) -> bool:
        return self.send(P.Cancel(request_id))

    def generate(self, **fields) -> str | None:
        """Start a reply (Generate fields); its request id, or None when the engine is not running."""
        fields.setdefault("request_id", uuid.uuid4().hex[:12])
        return fields["request_id"] if self.send(P.Generate(**fields)) else None

    def start(self) -> None:
        """Spawn the engine (tens of ms, so requests sent right after are taken); it says Hello later."""
        try:
            self.client.start()
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else "no message"
            self.error.emit(P.ErrorKind.INTERNAL.value, f"the engine did not start: {type(e).__name__}: {first}",
                            None)

    def stop(self) -> None:
        self._in_background(self.client.stop)

    def restart(self, reload: bool = True) -> None:
        self._in_background(lambda: self.client.restart(reload=reload))

    def stop_blocking(self, timeout: float = 3.0) -> None:
        """For application shutdown, where waiting is what is wanted."""
        self.client.stop(timeout=timeout)

    def _in_background(self, fn) -> None:
        def run():
            try:
                fn()
            except Exception as e:              # report, never raise into a dead thread
                first = str(e).splitlines()[0] if str(e) else "no message"
                self._arrived(P.Error(P.ErrorKind.INTERNAL, f"{type(e).__name__}: {first}"))
        threading.Thread(target=run, name="engine-lifecycle", daemon=True).start()

    # ------------------------------------------------------------ events
    def _arrived(self, event) -> None:         # any thread
        self._pending.append(event)
        with self._flag_lock:
            if self._scheduled:
                return
            self._scheduled = True
        self._wake.emit()

    @Slot()
    def _drain(self) -> None:                  # GUI thread
        with self._flag_lock:
            self._scheduled = False
        while self._pending:
            self._dispatch(self._pending.popleft())

    def _dispatch(self, ev) -> None:
        self.event.emit(ev)
        if isinstance(ev, P.Token):
            self.token.emit(ev.request_id, ev.token_id, ev.text)
        elif isinstance(ev, P.Telemetry):
            self.telemetry.emit(ev)
        elif isinstance(ev, P.StateChanged):
            self.stateChanged.emit(ev.state.value, ev.detail)
            if ev.state is P.EngineState.CRASHED:
                self.crashed.emit(ev.detail, ev.exit_code, ev.signal_name)
        elif isinstance(ev, P.GenerationDone):
            self.generationDone.emit(ev)
        elif isinstance(ev, P.LoadProgress):
            self.loadProgress.emit(ev.fraction, ev.message)
        elif isinstance(ev, P.ModelLoaded):
            self.modelLoaded.emit(ev)
        elif isinstance(ev, P.MemoryPlanEvent):
            self.memoryPlan.emit(ev.plan)
        elif isinstance(ev, P.KVSnapshot):
            self.kvSnapshot.emit(ev.snapshot)
        elif isinstance(ev, P.SessionSaved):
            self.sessionSaved.emit(ev)
        elif isinstance(ev, P.SessionRestored):
            self.sessionRestored.emit(ev)
        elif isinstance(ev, P.Error):
            self.error.emit(ev.kind.value, ev.message, ev.request_id)
