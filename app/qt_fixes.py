"""A guard against a reference-count bug in the installed PySide6.

PySide6 6.12.0 on Python 3.11 drops one reference to `None` on every call of a Qt method that
returns nothing (QLabel.setText, QTimer.singleShot, QObject.setObjectName, ...) and one reference to
`True` on every `Signal.emit()` made from Python (measured: 1,000 calls, 1,000 references fewer).
On Python before 3.12 these objects are not immortal: after a few thousand calls the count reaches
zero and the interpreter aborts ("none_dealloc: deallocating None", "bool_dealloc"). A chat that
streams a few thousand tokens gets there.

`install()` measures both leaks with a probe and, only where one is found, gives that object a
reserve of references no session can use up. None and True are static singletons that are never
freed, so extra references cost nothing; a PySide6 or Python that does not leak is left alone.
"""
from __future__ import annotations

import ctypes
import sys

RESERVE = 1 << 40
PROBE_CALLS = 64
_installed: list[str] | None = None


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
