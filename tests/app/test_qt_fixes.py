"""The guard against PySide6's lost references to None (void Qt calls) and True (emits): a process
that makes hundreds of thousands of such calls keeps running."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = r"""
from PySide6.QtCore import QCoreApplication, QObject, Signal
app = QCoreApplication([])
from app import qt_fixes
guarded = qt_fixes.install()
class O(QObject):
    s = Signal(str, int, str)
o = O(); o.s.connect(lambda *a: None)
for _ in range(200000):
    o.s.emit("r", 1, "t")
    o.setObjectName("x")
print(",".join(guarded) or "sound")
"""


def test_many_void_calls_and_emits_do_not_abort_the_process():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                       env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"}, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.strip() in ("sound", "None", "True", "None,True")


def test_install_is_idempotent_and_names_what_it_guarded():
    from app import qt_fixes
    first = qt_fixes.install()
    assert qt_fixes.install() is first and set(first) <= {"None", "True"}


GC_SCRIPT = r"""
import gc, threading, time
from PySide6.QtCore import QCoreApplication, QTimer
app = QCoreApplication([])
from app import qt_fixes
assert qt_fixes.collect_on_gui_thread() and not gc.isenabled()
freed_on = []

class Cycle:
    def __init__(self):
        self.me = self
    def __del__(self):
        freed_on.append(threading.current_thread().name)

def work():                        # a worker that makes cycles and allocates as a GGUF parse does
    for _ in range(200):
        Cycle()
    junk = [[i] for i in range(200000)]
    del junk

t = threading.Thread(target=work, name="worker"); t.start(); t.join()
assert freed_on == [], freed_on    # nothing collected on the worker
QTimer.singleShot(3 * qt_fixes.GC_INTERVAL_MS, app.quit)
app.exec()
print(len(freed_on), set(freed_on))
"""


def test_the_cycle_collector_runs_on_the_gui_thread_only():
    """A worker thread that fills the collector's generations frees nothing itself: the GUI thread's
    timer does (a QObject freed on a worker deadlocked the window, app/qt_fixes.py)."""
    r = subprocess.run([sys.executable, "-c", GC_SCRIPT], capture_output=True, text=True, timeout=120,
                       env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"}, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-800:]
    assert r.stdout.split() == ["200", "{'MainThread'}"]
