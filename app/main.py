"""Start the desktop app: `app.main.main(argv)` (called by app/launcher.py)."""
from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtWidgets import QApplication

    from app import paths
    from app.engine_bridge import EngineBridge
    from app.main_window import MainWindow
    from app.settings import AppSettings
    from app.store import Store
    from app.theme import apply_theme

    argv = list(sys.argv[1:] if argv is None else argv)
    app = QApplication.instance() or QApplication(["cellar", *argv])
    from app import qt_fixes
    qt_fixes.install()                     # before the first signal: see app/qt_fixes.py
    app.setApplicationName("Cellar")
    app.setOrganizationName("cellar")
    app.setDesktopFileName("cellar")
    settings = AppSettings.load()
    apply_theme(app, settings.theme)
    store = Store(paths.db_path())
    bridge = EngineBridge()
    window = MainWindow(store, settings, bridge)
    window.show()
    models = [a for a in argv if a.endswith(".gguf") and Path(a).is_file()]
    if models:
        window.loader.open_path(models[0])
    try:
        return app.exec()
    finally:
        bridge.stop_blocking()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
