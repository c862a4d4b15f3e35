"""A guard against a reference-count bug in the installed PySide6.

PySide6 6.12.0 drops one reference to Python's `True` on every `Signal.emit()` made from Python
(measured: 10,000 emits, True's refcount 10,000 lower; False and None unchanged). On Python before
3.12, where True is not immortal, the count reaches zero after a few thousand emits (a few
thousand streamed tokens) and the interpreter aborts with "bool_dealloc: deallocating True or
False". `install()` measures the leak with a probe signal and, only where it is there, gives True
a reserve of references large enough that no session can use it up (one per emit). True is a
static singleton that is never freed, so extra references cost nothing. Nothing is changed on a
PySide6 or Python that does not leak.
"""
from __future__ import annotations

import ctypes
import sys

RESERVE = 1 << 40
_installed: bool | None = None


def leaks_true_per_emit() -> int:
    """References to True one Python-side emit drops (0 on a sound PySide6)."""
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal(str)

    probe = _Probe()
    probe.ping.connect(lambda _s: None)
    n = 64
    before = sys.getrefcount(True)
    for _ in range(n):
        probe.ping.emit("x")
    lost = before - sys.getrefcount(True)
    probe.deleteLater()
    return max(0, round(lost / n))


def install() -> bool:
    """Give True its reserve when emits leak it; True when the guard was needed. Idempotent."""
    global _installed
    if _installed is not None:
        return _installed
    _installed = False
    if sys.version_info < (3, 12) and sys.implementation.name == "cpython" and leaks_true_per_emit() > 0:
        ctypes.c_ssize_t.from_address(id(True)).value += RESERVE    # ob_refcnt is PyObject's first field
        _installed = True
    return _installed
