"""A process that writes conversations through app/store.py the way the chat controller does, for kill
tests: a user message, an empty incomplete reply, the reply rewritten as tokens stream in (every
`commit_every` seconds, complete=False), then marked complete with its stats.

    python -m tests.store_writer DB [turns] [commit_every]

After each write returns it prints one line on stdout (flushed), so the parent knows what reached
the store before it killed this process:
    user ID TEXT_LEN            the user message is stored
    reply ID                    the reply row exists (empty, incomplete)
    partial ID LEN              the reply's first LEN characters are stored (incomplete)
    done ID LEN                 the reply is stored complete with LEN characters
"""
from __future__ import annotations

import sys
import time

from app.store import Store


def reply_text(turn: int) -> str:
    """What the model 'says' on a turn: deterministic, so the parent can check every stored prefix."""
    return "".join(f"word{turn}_{i} " for i in range(400))


def main(db: str, turns: int = 10_000, commit_every: float = 0.01) -> None:
    store = Store(db)
    out = sys.stdout
    conv = store.create_conversation("kill test")
    parent = None
    for turn in range(turns):
        text = f"question {turn}"
        user = store.add_message(conv.id, parent, "user", text)
        out.write(f"user {user.id} {len(text)}\n")
        out.flush()
        reply = store.add_message(conv.id, user.id, "assistant", "", complete=False)
        out.write(f"reply {reply.id}\n")
        out.flush()
        full, shown, last = reply_text(turn), "", time.monotonic()
        for piece in full.split(" ")[:-1]:
            shown += piece + " "                          # one "token"
            time.sleep(0.0005)
            if time.monotonic() - last >= commit_every:
                store.update_message(reply.id, shown, complete=False)
                out.write(f"partial {reply.id} {len(shown)}\n")
                out.flush()
                last = time.monotonic()
        store.update_message(reply.id, shown, complete=True, stats={"stop_reason": "length"})
        out.write(f"done {reply.id} {len(shown)}\n")
        out.flush()
        parent = reply.id


if __name__ == "__main__":
    main(sys.argv[1], *(int(sys.argv[2]),) if len(sys.argv) > 2 else (),
         *(float(sys.argv[3]),) if len(sys.argv) > 3 else ())
