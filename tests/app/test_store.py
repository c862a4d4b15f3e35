"""The conversation store: WAL, every message on disk as soon as it is written, branches, search."""
from __future__ import annotations

import sqlite3

from app.store import Store


def test_wal_and_each_message_visible_to_another_connection(tmp_path):
    s = Store(tmp_path / "c.sqlite3")
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    c = s.create_conversation("Lists")
    u = s.add_message(c.id, None, "user", "How do I reverse a list?")
    a = s.add_message(c.id, u.id, "assistant", "Use", complete=False)
    other = sqlite3.connect(str(tmp_path / "c.sqlite3"))        # a second reader sees committed rows only
    assert other.execute("SELECT content, complete FROM messages WHERE id=?", (a.id,)).fetchone() == ("Use", 0)
    s.update_message(a.id, "Use reversed()", complete=False)
    assert other.execute("SELECT content FROM messages WHERE id=?", (a.id,)).fetchone() == ("Use reversed()",)
    s.update_message(a.id, "Use reversed() or xs[::-1].", stats={"tok_s": 80.0})
    row = other.execute("SELECT content, complete, stats FROM messages WHERE id=?", (a.id,)).fetchone()
    assert row == ("Use reversed() or xs[::-1].", 1, '{"tok_s": 80.0}')
    assert s.last_write is not None


def test_reopen_keeps_everything(tmp_path):
    s = Store(tmp_path / "c.sqlite3")
    c = s.create_conversation("Poem", system_prompt="Be brief.", sampling={"temperature": 0.2})
    u = s.add_message(c.id, None, "user", "A poem")
    s.add_message(c.id, u.id, "assistant", "Roses")
    s.close()
    s2 = Store(tmp_path / "c.sqlite3")
    c2 = s2.conversation(c.id)
    assert (c2.title, c2.system_prompt, c2.sampling) == ("Poem", "Be brief.", {"temperature": 0.2})
    assert [m.content for m in s2.thread(c.id)] == ["A poem", "Roses"]


def test_edit_makes_a_sibling_and_branches_are_navigable(tmp_path):
    s = Store(tmp_path / "c.sqlite3")
    c = s.create_conversation()
    u1 = s.add_message(c.id, None, "user", "first question")
    a1 = s.add_message(c.id, u1.id, "assistant", "first answer")
    u2 = s.add_message(c.id, None, "user", "edited question")          # edit: sibling of u1
    a2 = s.add_message(c.id, u2.id, "assistant", "second answer")
    a2b = s.add_message(c.id, u2.id, "assistant", "regenerated answer")  # regenerate: sibling of a2
    assert [m.id for m in s.siblings(u1.id)] == [u1.id, u2.id]
    assert [m.id for m in s.siblings(a2.id)] == [a2.id, a2b.id]
    assert [m.content for m in s.thread(c.id)] == ["edited question", "regenerated answer"]
    s.show_branch(u1.id)                      # back to the first version: its branch comes back whole
    assert [m.id for m in s.thread(c.id)] == [u1.id, a1.id]
    s.show_branch(a2.id)
    assert [m.id for m in s.thread(c.id)] == [u2.id, a2.id]


def test_search_titles_and_messages_rename_delete(tmp_path):
    s = Store(tmp_path / "c.sqlite3")
    a = s.create_conversation("Python lists")
    b = s.create_conversation("Trip ideas")
    s.add_message(b.id, None, "user", "Somewhere with 100% sunshine")
    assert [c.id for c in s.search("python")] == [a.id]
    assert [c.id for c in s.search("100%")] == [b.id]
    assert s.search("50%") == []                # % is literal, not a wildcard
    s.rename(a.id, "Reversing lists")
    assert s.conversation(a.id).title == "Reversing lists"
    s.delete(b.id)
    assert [c.id for c in s.conversations()] == [a.id]
    assert s.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
