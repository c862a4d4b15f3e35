"""App test fixtures: a temp data dir for every test, and the main window without or with the real engine."""
from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from app import qt_fixes  # noqa: E402

qt_fixes.install()          # every Qt test here, the bridge's included: see app/qt_fixes.py


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "cellar-data"
    monkeypatch.setenv("CELLAR_DATA_DIR", str(d))
    return d


def make_window(qtbot, start_engine: bool):
    from app import paths
    from app.engine_bridge import EngineBridge
    from app.main_window import MainWindow
    from app.settings import AppSettings
    from app.store import Store
    store = Store(paths.db_path())
    bridge = EngineBridge()
    w = MainWindow(store, AppSettings.load(), bridge, start_engine=start_engine)
    qtbot.addWidget(w)
    w.show()
    return w


@pytest.fixture
def window(qtbot):
    """The real main window, engine not started (for what needs no model)."""
    w = make_window(qtbot, start_engine=False)
    yield w
    w.bridge.stop_blocking()
    w.store.close()
