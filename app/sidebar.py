"""The left sidebar: new chat, search, and the conversations grouped by day."""
from __future__ import annotations

import datetime as dt

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QInputDialog, QLineEdit, QListWidget, QListWidgetItem, QMenu, QMessageBox,
                               QPushButton, QVBoxLayout, QWidget)

from app.store import Store

ID_ROLE = Qt.ItemDataRole.UserRole


def day_group(ts: float, today: dt.date | None = None) -> str:
    today = today or dt.date.today()
    d = dt.date.fromtimestamp(ts)
    if d == today:
        return "Today"
    if d == today - dt.timedelta(days=1):
        return "Yesterday"
    if (today - d).days < 7:
        return "This week"
    return "Older"


class Sidebar(QWidget):
    conversationSelected = Signal(str)
    newRequested = Signal()
    deleted = Signal(str)

    def __init__(self, store: Store, parent=None):
        super().__init__(parent)
        self.store = store
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 0, 6)
        self.new_btn = QPushButton("+ New chat")
        self.new_btn.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_btn.clicked.connect(self.newRequested.emit)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search chats")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(lambda _: self.refresh())
        self.list = QListWidget()
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        self.list.itemClicked.connect(self._clicked)
        self.list.itemActivated.connect(self._clicked)
        lay.addWidget(self.new_btn)
        lay.addWidget(self.search)
        lay.addWidget(self.list, 1)
        self.current: str | None = None
        self.refresh()

    def refresh(self) -> None:
        q = self.search.text().strip()
        convs = self.store.search(q) if q else self.store.conversations()
        self.list.clear()
        group = None
        for c in convs:
            g = day_group(c.updated)
            if g != group:
                head = QListWidgetItem(g)
                head.setFlags(Qt.ItemFlag.NoItemFlags)
                f = head.font()
                f.setBold(True)
                head.setFont(f)
                self.list.addItem(head)
                group = g
            item = QListWidgetItem("  " + c.title)
            item.setData(ID_ROLE, c.id)
            item.setToolTip(c.title)
            self.list.addItem(item)
            if c.id == self.current:
                item.setSelected(True)
                self.list.setCurrentItem(item)

    def select(self, cid: str | None) -> None:
        self.current = cid or None
        self.refresh()

    def ids(self) -> list[str]:
        return [self.list.item(i).data(ID_ROLE) for i in range(self.list.count()) if self.list.item(i).data(ID_ROLE)]

    def _clicked(self, item: QListWidgetItem) -> None:
        cid = item.data(ID_ROLE)
        if cid:
            self.current = cid
            self.conversationSelected.emit(cid)

    def _menu(self, pos) -> None:
        item = self.list.itemAt(pos)
        cid = item.data(ID_ROLE) if item else None
        if not cid:
            return
        menu = QMenu(self)
        menu.addAction("Rename…", lambda: self.rename_interactive(cid))
        menu.addAction("Delete", lambda: self.delete_interactive(cid))
        menu.exec(self.list.viewport().mapToGlobal(pos))

    def keyPressEvent(self, e):
        item = self.list.currentItem()
        cid = item.data(ID_ROLE) if item else None
        if cid and e.key() == Qt.Key.Key_F2:
            self.rename_interactive(cid)
        elif cid and e.key() == Qt.Key.Key_Delete:
            self.delete_interactive(cid)
        else:
            super().keyPressEvent(e)

    def rename_interactive(self, cid: str) -> None:
        c = self.store.conversation(cid)
        title, ok = QInputDialog.getText(self, "Rename chat", "Name:", text=c.title if c else "")
        if ok and title.strip():
            self.rename(cid, title)

    def rename(self, cid: str, title: str) -> None:
        self.store.rename(cid, title)
        self.refresh()

    def delete_interactive(self, cid: str) -> None:
        c = self.store.conversation(cid)
        if QMessageBox.question(self, "Delete chat", f"Delete “{c.title}” and all its messages?") \
                == QMessageBox.StandardButton.Yes:
            self.delete(cid)

    def delete(self, cid: str) -> None:
        self.store.delete(cid)
        if self.current == cid:
            self.current = None
        self.refresh()
        self.deleted.emit(cid)
