"""Driving the window as a person would: drag a file over it and drop it."""
from __future__ import annotations

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

_keep: list[QMimeData] = []          # an event does not own its mime data: keep it alive


def file_mime(path) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    _keep.append(mime)
    return mime


def drag_enter(window, path) -> QDragEnterEvent:
    ev = QDragEnterEvent(window.rect().center(), Qt.DropAction.CopyAction, file_mime(path),
                         Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, ev)
    return ev


def drop(window, path) -> QDropEvent:
    """Drag enter, then drop (Qt hands a drop only to the widget the drag entered)."""
    drag_enter(window, path)
    ev = QDropEvent(QPointF(window.rect().center()), Qt.DropAction.CopyAction, file_mime(path),
                    Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, ev)
    return ev
