"""Start the desktop app: `app.main.main(argv)` (called by app/launcher.py)."""
from __future__ import annotations

import sys
from pathlib import Path


def first_model(argv: list[str], last_model: str | None) -> tuple[str, str] | None:
    """What the window opens with: ("preview", path) for a .gguf given on the command line (its memory
    preview, then Load); ("load", path) for the default model on the first start, when it is downloaded
    (`make run` fetches it: the app starts on it) and no model was ever loaded; None otherwise (the last
    model is reloaded by the window itself, or the welcome panel offers models)."""
    models = [a for a in argv if a.endswith(".gguf") and Path(a).is_file()]
    if models:
        return "preview", models[0]
    if last_model is None:
        from engine.pull import cached_path
        default = cached_path("default")
        if default is not None:
            return "load", str(default)
    return None


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
    first = first_model(argv, settings.last_model)
    if first is not None and first[0] == "preview":
        window.loader.open_path(first[1])
    elif first is not None:
        window.load_when_ready(first[1])
    try:
        return app.exec()
    finally:
        bridge.stop_blocking()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
