"""What a built bundle holds, checked from inside it: `CELLAR_BUNDLE_CHECK=1 dist/cellar/cellar`.

Prints one JSON object on stdout and exits 0 when every part was found and works, 1 otherwise:
- frozen, root: whether this runs frozen, and the bundle's data folder (sys._MEIPASS)
- native: the kernels library is loaded from inside the bundle, and the instruction set it runs
- templates: the built-in chat templates the engine finds, and that one renders
- resources: the icon and the .desktop file next to the code
- qt: QtCore/QtGui/QtWidgets and pyqtgraph import, the SVG icon loads, a plot widget builds (offscreen);
  in the bundle, the Qt modules left out on purpose (EXCLUDED_QT) must fail to import
- worker: the engine process starts (multiprocessing spawn of the frozen program), reports idle with
  no Qt library loaded (the engine never needs Qt), stops
Each part is checked in isolation: one failing part is reported, never hides the others.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

EXCLUDED_QT = ("QtNetwork", "QtQml", "QtQuick", "QtSvg", "QtTest", "QtSql",
               "QtPdf", "QtMultimedia", "QtDBus", "QtPrintSupport")


def bundle_root() -> Path:
    return Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent.parent))


def _inside(path: Path) -> bool:
    try:
        Path(path).resolve().relative_to(bundle_root().resolve())
        return True
    except ValueError:
        return False


def _mapped(lib_name: str, pid: int | str = "self") -> list[str]:
    """Paths of the files named lib_name that a process has mapped (what was really loaded)."""
    with open(f"/proc/{pid}/maps") as f:
        return sorted({line.split(None, 5)[-1].strip() for line in f if line.rstrip().endswith("/" + lib_name)})


def check_native() -> dict:
    from engine import kernels
    mapped = _mapped(kernels.LIB_NAME)
    return {"ok": bool(kernels.AVAILABLE) and bool(mapped) and all(_inside(Path(p)) for p in mapped),
            "available": bool(kernels.AVAILABLE), "isa": kernels.ISA, "loaded_from": mapped}


def check_templates() -> dict:
    from engine import templates
    names = sorted(p.stem for p in templates.BUILTIN_DIR.glob("*.jinja"))
    text = templates.render_chat(templates.builtin_template("chatml"), [{"role": "user", "content": "hi"}])
    return {"ok": {"chatml", "gemma"} <= set(names) and "hi" in text and _inside(templates.BUILTIN_DIR),
            "names": names, "dir": str(templates.BUILTIN_DIR)}


def check_resources() -> dict:
    res = bundle_root() / "resources"
    icon, desktop = res / "icons" / "cellar.svg", res / "cellar.desktop"
    return {"ok": icon.is_file() and desktop.is_file(), "icon": str(icon), "desktop": str(desktop)}


def check_qt() -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import importlib
    import numpy as np
    from PySide6 import QtCore, QtGui, QtWidgets
    import pyqtgraph as pg
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    icon = QtGui.QIcon(str(bundle_root() / "resources" / "icons" / "cellar.svg"))
    pixmap = icon.pixmap(64, 64)
    plot = pg.PlotWidget()
    plot.plot([1.0, 3.0, 2.0])
    plot.addItem(pg.ImageItem(np.arange(64, dtype=np.float32).reshape(8, 8)))
    plot.addItem(pg.BarGraphItem(x=[0, 1], height=[2, 1], width=0.5))
    plot.show()
    plot.deleteLater()
    app.processEvents()
    present = []
    for name in EXCLUDED_QT if getattr(sys, "frozen", False) else ():
        try:
            importlib.import_module(f"PySide6.{name}")
            present.append(name)
        except ImportError:
            pass
    return {"ok": not pixmap.isNull() and not present, "qt": QtCore.qVersion(), "pyqtgraph": pg.__version__,
            "icon_loaded": not pixmap.isNull(), "excluded_but_present": present}


def check_worker(timeout: float = 120.0) -> dict:
    from engine import protocol as P
    from engine.client import EngineClient
    t0 = time.monotonic()
    client = EngineClient()
    client.start()
    try:
        idle = client.wait_state(P.EngineState.IDLE, timeout=timeout)
        pid = client.pid
        qt_in_worker = _mapped("libQt6Core.so.6", pid) if idle else []
    finally:
        client.stop()
    return {"ok": idle and pid != os.getpid() and not qt_in_worker, "reached_idle": idle, "pid": pid,
            "qt_in_worker": qt_in_worker, "exit": client.last_exit[0],
            "seconds": round(time.monotonic() - t0, 2)}


CHECKS = {"native": check_native, "templates": check_templates, "resources": check_resources,
          "qt": check_qt, "worker": check_worker}


def main() -> int:
    from engine import __version__
    report: dict = {"frozen": bool(getattr(sys, "frozen", False)), "root": str(bundle_root()),
                    "version": __version__}
    for name, fn in CHECKS.items():
        try:
            report[name] = fn()
        except Exception as e:  # reported, so that the other parts are still checked
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    report["ok"] = all(report[name]["ok"] for name in CHECKS)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
