"""Guards against two PySide6 hazards: a reference-count bug, and QObjects freed on the wrong thread.

PySide6 6.12.0 on Python 3.11 drops one reference to `None` on every call of a Qt method that
returns nothing (QLabel.setText, QTimer.singleShot, QObject.setObjectName, ...) and one reference to
`True` on every `Signal.emit()` made from Python (measured: 1,000 calls, 1,000 references fewer).
On Python before 3.12 these objects are not immortal: after a few thousand calls the count reaches
zero and the interpreter aborts ("none_dealloc: deallocating None", "bool_dealloc"). A chat that
streams a few thousand tokens gets there.

`install()` measures both leaks with a probe and, only where one is found, gives that object a
reserve of references no session can use up. None and True are static singletons that are never
freed, so extra references cost nothing; a PySide6 or Python that does not leak is left alone.

`collect_on_gui_thread()`: Python's cyclic garbage collector runs on whichever thread allocates when
a generation fills up. On a worker thread (a GGUF parsed off the GUI thread) it can free a QObject
that lives on the GUI thread: ~QObject then runs there, takes Qt's connection lock and waits for the
GIL, while the GUI thread, holding the GIL, waits for the same lock (seen: the window hung for good on
a dropped file). The automatic collector is turned off and a timer on the GUI thread runs the same
collections, so every cycle is freed there.
"""
from __future__ import annotations

import ctypes
import gc
import sys

RESERVE = 1 << 40
PROBE_CALLS = 64
_installed: list[str] | None = None
_gc_timer = None
GC_INTERVAL_MS = 500


def _lost(obj, call) -> int:
    before = sys.getrefcount(obj)
    for _ in range(PROBE_CALLS):
        call()
    return max(0, round((before - sys.getrefcount(obj)) / PROBE_CALLS))


def leaks() -> dict[str, int]:
    """References one call drops: {"None": per void Qt method call, "True": per Python-side emit}."""
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal(str)

    probe = _Probe()
    probe.ping.connect(lambda _s: None)
    out = {"None": _lost(None, lambda: probe.setObjectName("probe")),
           "True": _lost(True, lambda: probe.ping.emit("x"))}
    probe.deleteLater()
    return out


def install() -> list[str]:
    """Reserve references for the singletons this PySide6 leaks; the names guarded. Idempotent."""
    global _installed
    if _installed is not None:
        return _installed
    _installed = []
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _installed                      # immortal singletons: nothing can run out
    for name, per_call in leaks().items():
        if per_call > 0:
            obj = {"None": None, "True": True}[name]
            ctypes.c_ssize_t.from_address(id(obj)).value += RESERVE   # ob_refcnt: PyObject's first field
            _installed.append(name)
    return _installed


def _collect() -> None:
    """What the interpreter would collect now, by its own thresholds and counts."""
    (t0, t1, t2), (c0, c1, c2) = gc.get_threshold(), gc.get_count()
    if c0 > t0:
        gc.collect(2 if c1 > t1 and c2 > t2 else 1 if c1 > t1 else 0)


def collect_on_gui_thread() -> bool:
    """Move the cyclic garbage collector onto the GUI thread (see above). Call on that thread once a
    QApplication exists; idempotent. Whether it is in place."""
    global _gc_timer
    if _gc_timer is not None:
        return True
    from PySide6.QtCore import QCoreApplication, QThread, QTimer
    app = QCoreApplication.instance()
    if app is None or not QThread.isMainThread():
        return False
    gc.disable()
    _gc_timer = QTimer(app)
    _gc_timer.setInterval(GC_INTERVAL_MS)
    _gc_timer.timeout.connect(_collect)
    _gc_timer.start()
    return True
