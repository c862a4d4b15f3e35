"""Conversation data survives kill -9: a process writing conversations through app/store.py as the chat
controller does is killed mid-stream again and again; every message it had stored is there, complete
messages exactly, and at most the one reply in flight is incomplete (and holds a prefix of the reply)."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.store_writer import reply_text

ROOT = Path(__file__).resolve().parents[1]
KILLS = 12


def run_and_kill(db: Path, rng: random.Random) -> list[str]:
    """Start a writer, let it stream for a random while, SIGKILL it; the lines it printed."""
    p = subprocess.Popen([sys.executable, "-m", "tests.store_writer", str(db)], cwd=ROOT, stdout=subprocess.PIPE)
    fd = p.stdout.fileno()
    os.set_blocking(fd, False)
    lines: list[str] = []
    buf = b""

    def drain() -> None:
        nonlocal buf
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                return
            buf += chunk
            *full, buf = buf.split(b"\n")
            lines.extend(x.decode() for x in full)

    deadline = time.monotonic() + rng.uniform(0.3, 1.5)
    while time.monotonic() < deadline or not any(x.startswith("partial") for x in lines):
        drain()
        if time.monotonic() > deadline + 60:
            break
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    drain()                                   # whatever it printed before the kill
    p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    return lines


def test_kill_9_mid_stream_loses_at_most_the_reply_in_flight(tmp_path):
    db = tmp_path / "chats.db"
    rng = random.Random(5)
    stored = lost = in_flight_lost = 0
    for _ in range(KILLS):
        lines = run_and_kill(db, rng)
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = {r[0]: r[1:] for r in con.execute("SELECT id, role, content, complete, conversation_id FROM messages")}
        turn, in_flight, conv = -1, None, None
        for line in lines:
            kind, mid, *rest = line.split()
            if kind in ("user", "done"):
                stored += 1
                if mid not in rows:
                    lost += 1
                    continue
            if kind == "user":
                turn += 1
                conv = rows[mid][3]
                assert rows[mid][:3] == ("user", f"question {turn}", 1)
            elif kind == "reply":
                in_flight = mid
            elif kind == "partial":
                content = rows[mid][1]
                assert len(content) >= int(rest[0]) and content == reply_text(turn)[:len(content)]
            elif kind == "done":
                assert rows[mid][:3] == ("assistant", reply_text(turn), 1)
                in_flight = None
        assert lost == 0, lines[-5:]
        if conv is None:
            continue
        incomplete = [m for m, r in rows.items() if r[3] == conv and r[2] == 0]
        assert len(incomplete) <= 1, incomplete        # only the reply that was streaming
        if incomplete:
            leaf = con.execute("SELECT leaf_id FROM conversations WHERE id=?", (conv,)).fetchone()[0]
            assert incomplete[0] == leaf and in_flight in (None, incomplete[0])
            content = rows[incomplete[0]][1]
            assert content == reply_text(turn)[:len(content)]
            in_flight_lost += 1
        con.close()
    assert stored >= 2 * KILLS and lost == 0, (stored, lost)
    print(f"\nkill -9 x{KILLS}: {stored} messages stored and reported, {lost} lost, "
          f"{in_flight_lost} replies cut short in flight (their streamed prefix kept)")
