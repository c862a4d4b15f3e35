"""Light, dark, or the system's palette."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

_system_palette: QPalette | None = None


def dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor("#1e1f22"), QColor("#2b2d31"), QColor("#e6e6e6")
    for role, colour in ((QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
                         (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, window),
                         (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, window),
                         (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.ToolTipBase, base),
                         (QPalette.ColorRole.ToolTipText, text), (QPalette.ColorRole.Highlight, QColor("#3b82f6")),
                         (QPalette.ColorRole.HighlightedText, QColor("white")), (QPalette.ColorRole.Link, QColor("#60a5fa")),
                         (QPalette.ColorRole.Mid, QColor("#8a8d93")), (QPalette.ColorRole.PlaceholderText, QColor("#8a8d93"))):
        p.setColor(role, colour)
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#777"))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#777"))
    return p


def apply_theme(app: QApplication, theme: str) -> None:
    global _system_palette
    if _system_palette is None:
        _system_palette = QPalette(app.palette())
    hints = app.styleHints()
    if hasattr(hints, "setColorScheme"):           # Qt 6.8+: let the style follow
        hints.setColorScheme({"light": Qt.ColorScheme.Light, "dark": Qt.ColorScheme.Dark}.get(
            theme, Qt.ColorScheme.Unknown))
    if theme == "dark":
        app.setPalette(dark_palette())
    elif theme == "light":
        app.setPalette(app.style().standardPalette())
    else:
        app.setPalette(_system_palette)
