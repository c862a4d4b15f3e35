"""Window geometry and dock layout, remembered between runs in an INI file under the config dir."""
from __future__ import annotations

from PySide6.QtCore import QSettings

from app import paths


def _qs() -> QSettings:
    return QSettings(str(paths.ui_state_path()), QSettings.Format.IniFormat)


def save(window) -> None:
    s = _qs()
    s.setValue("geometry", window.saveGeometry())
    s.setValue("state", window.saveState())
    s.setValue("dock_visible", "1" if window.dock.isVisible() else "0")   # strings: bools leak in QSettings
    s.sync()


def restore(window) -> bool:
    s = _qs()
    geometry, state = s.value("geometry"), s.value("state")
    if geometry is not None:
        window.restoreGeometry(geometry)
    if state is not None:
        window.restoreState(state)
    visible = s.value("dock_visible")
    if visible is not None:
        window.dock.setVisible(str(visible) in ("1", "true"))
    return geometry is not None
