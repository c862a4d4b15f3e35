"""Conversations in SQLite (WAL mode), one row per message, branches by parent links.

A message's parent is the message before it; an edit or a regenerate adds a sibling (same parent),
so every earlier version stays and can be shown again. A conversation remembers the leaf the user
last looked at; the thread shown is the path from the root to that leaf.

Every write commits at once: a finished message is on disk when add/update returns, and a reply
being streamed is written by the caller as it grows (update_message(..., complete=False)).
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '', sampling TEXT NOT NULL DEFAULT '{}',
    model TEXT, leaf_id TEXT);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id TEXT REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL, content TEXT NOT NULL, created REAL NOT NULL,
    complete INTEGER NOT NULL DEFAULT 1, stats TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS messages_by_parent ON messages(conversation_id, parent_id, created);
"""


@dataclass
class Conversation:
    id: str
    title: str
    created: float
    updated: float
    system_prompt: str = ""
    sampling: dict = field(default_factory=dict)
    model: str | None = None
    leaf_id: str | None = None


@dataclass
class Message:
    id: str
    conversation_id: str
    parent_id: str | None
    role: str
    content: str
    created: float
    complete: bool = True
    stats: dict = field(default_factory=dict)


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


class Store:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None)   # autocommit: each write lands
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.last_write: float | None = None

    def close(self) -> None:
        self.db.close()

    def _write(self, sql: str, args=()) -> None:
        self.db.execute(sql, args)
        self.last_write = time.time()

    # ---------------------------------------------------------------- conversations
    def create_conversation(self, title: str = "New chat", system_prompt: str = "",
                            sampling: dict | None = None, model: str | None = None) -> Conversation:
        now = time.time()
        c = Conversation(_new_id(), title, now, now, system_prompt, dict(sampling or {}), model)
        self._write("INSERT INTO conversations VALUES (?,?,?,?,?,?,?,?)",
                    (c.id, c.title, c.created, c.updated, c.system_prompt, json.dumps(c.sampling), c.model, None))
        return c

    def conversation(self, cid: str) -> Conversation | None:
        r = self.db.execute("SELECT * FROM conversations WHERE id=?", (cid,)).fetchone()
        return _conv(r) if r else None

    def conversations(self) -> list[Conversation]:
        """All conversations, most recently updated first."""
        return [_conv(r) for r in self.db.execute("SELECT * FROM conversations ORDER BY updated DESC")]

    def rename(self, cid: str, title: str) -> None:
        self._write("UPDATE conversations SET title=? WHERE id=?", (title.strip() or "Untitled", cid))

    def delete(self, cid: str) -> None:
        self._write("DELETE FROM conversations WHERE id=?", (cid,))

    def set_system_prompt(self, cid: str, text: str) -> None:
        self._write("UPDATE conversations SET system_prompt=?, updated=? WHERE id=?", (text, time.time(), cid))

    def set_sampling(self, cid: str, sampling: dict) -> None:
        self._write("UPDATE conversations SET sampling=? WHERE id=?", (json.dumps(sampling), cid))

    def set_model(self, cid: str, model: str | None) -> None:
        self._write("UPDATE conversations SET model=? WHERE id=?", (model, cid))

    # ---------------------------------------------------------------- messages
    def add_message(self, cid: str, parent_id: str | None, role: str, content: str, *,
                    complete: bool = True, stats: dict | None = None) -> Message:
        """Append a message under parent_id (a new sibling when the parent already has children);
        it becomes the conversation's shown leaf."""
        m = Message(_new_id(), cid, parent_id, role, content, time.time(), complete, dict(stats or {}))
        self.db.execute("BEGIN")
        try:
            self.db.execute("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?)",
                            (m.id, cid, parent_id, role, content, m.created, int(complete), json.dumps(m.stats)))
            self.db.execute("UPDATE conversations SET leaf_id=?, updated=? WHERE id=?", (m.id, m.created, cid))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.last_write = time.time()
        return m

    def update_message(self, mid: str, content: str, *, complete: bool = True, stats: dict | None = None) -> None:
        if stats is None:
            self._write("UPDATE messages SET content=?, complete=? WHERE id=?", (content, int(complete), mid))
        else:
            self._write("UPDATE messages SET content=?, complete=?, stats=? WHERE id=?",
                        (content, int(complete), json.dumps(stats), mid))

    def message(self, mid: str) -> Message | None:
        r = self.db.execute("SELECT * FROM messages WHERE id=?", (mid,)).fetchone()
        return _msg(r) if r else None

    def children(self, cid: str, parent_id: str | None) -> list[Message]:
        rows = self.db.execute("SELECT * FROM messages WHERE conversation_id=? AND parent_id IS ? "
                               "ORDER BY created, rowid", (cid, parent_id))
        return [_msg(r) for r in rows]

    def siblings(self, mid: str) -> list[Message]:
        """The message and its alternatives (same parent), oldest first."""
        m = self.message(mid)
        return self.children(m.conversation_id, m.parent_id) if m else []

    def thread(self, cid: str, leaf_id: str | None = None) -> list[Message]:
        """Root-to-leaf path ending at leaf_id (default: the conversation's shown leaf)."""
        if leaf_id is None:
            c = self.conversation(cid)
            leaf_id = c.leaf_id if c else None
        out: list[Message] = []
        while leaf_id is not None:
            m = self.message(leaf_id)
            if m is None:
                break
            out.append(m)
            leaf_id = m.parent_id
        return out[::-1]

    def latest_leaf(self, mid: str) -> str:
        """Follow the newest child down from mid: the leaf of that branch as last extended."""
        m = self.message(mid)
        while True:
            kids = self.children(m.conversation_id, m.id)
            if not kids:
                return m.id
            m = kids[-1]

    def show_branch(self, mid: str) -> None:
        """Make the branch through mid the shown one."""
        m = self.message(mid)
        self._write("UPDATE conversations SET leaf_id=? WHERE id=?", (self.latest_leaf(mid), m.conversation_id))

    def set_leaf(self, cid: str, leaf_id: str | None) -> None:
        self._write("UPDATE conversations SET leaf_id=? WHERE id=?", (leaf_id, cid))

    # ---------------------------------------------------------------- search
    def search(self, text: str) -> list[Conversation]:
        """Conversations whose title or any message contains text (case-insensitive), newest first."""
        like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.db.execute(
            "SELECT * FROM conversations c WHERE c.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
            "WHERE m.conversation_id=c.id AND m.content LIKE ? ESCAPE '\\') ORDER BY updated DESC", (like, like))
        return [_conv(r) for r in rows]


def _conv(r) -> Conversation:
    return Conversation(r["id"], r["title"], r["created"], r["updated"], r["system_prompt"],
                        json.loads(r["sampling"] or "{}"), r["model"], r["leaf_id"])


def _msg(r) -> Message:
    return Message(r["id"], r["conversation_id"], r["parent_id"], r["role"], r["content"], r["created"],
                   bool(r["complete"]), json.loads(r["stats"] or "{}"))
