"""The guard against PySide6's lost reference to True on each emit: thousands of emits stay safe."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import sys
from PySide6.QtCore import QCoreApplication, QObject, Signal
app = QCoreApplication([])
from app import qt_fixes
guarded = qt_fixes.install()
class O(QObject):
    s = Signal(str, int, str)
o = O(); o.s.connect(lambda *a: None)
for _ in range(200000):
    o.s.emit("r", 1, "t")
print("guarded" if guarded else "sound", qt_fixes.leaks_true_per_emit() if guarded else 0)
"""


def test_many_emits_do_not_abort_the_process():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                       env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"}, cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert r.returncode == 0, r.stderr[-500:]
    state, _ = r.stdout.split()
    assert state in ("guarded", "sound")


def test_install_is_idempotent():
    from app import qt_fixes
    assert qt_fixes.install() == qt_fixes.install()
