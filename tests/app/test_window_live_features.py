"""With the real engine and SmolLM2: a conversation's own sampling and system prompt reach the engine;
the KV cell map follows a reply with the engine's real cells. One test, so the model loads once."""
from __future__ import annotations

import pytest

from engine import protocol as P
from tests.app.test_window_live import live, send_and_wait  # noqa: F401  (live is a fixture)

pytestmark = pytest.mark.slow


def test_chat_settings_reach_the_engine_and_the_cell_map_follows_a_reply(qtbot, live):  # noqa: F811
    w = live                                     # Settings: max_tokens 12, temperature 0

    # a conversation's own reply length and system prompt
    # longer than SmolLM2's template's own default system prompt, which is used when none is given
    prompt = ("You are a careful assistant. You answer in French, in one short sentence, and never in English. "
              "When you are not sure, you say so plainly and suggest where the user could look it up.")
    w.controller.set_chat_settings(prompt,
                                   {**w.controller.chat_settings()[1], "max_tokens": 3})
    mid, stats = send_and_wait(qtbot, w, "Name a colour.")
    assert (stats["n_tokens"], stats["stop_reason"]) == (3, "length")
    with_system = stats["prompt_tokens"]
    w.new_chat()
    mid, stats = send_and_wait(qtbot, w, "Name a colour.")
    assert stats["n_tokens"] > 3 or stats["stop_reason"] == "eos"      # the default reply length, 12
    assert with_system > stats["prompt_tokens"] + 15                  # our system prompt was sent

    # the cell map: snapshots while the reply streams, then the engine's cells where they are
    w.new_chat()
    w.settings.max_tokens = 60
    w.kv_timer.setInterval(50)       # the window asks every 500 ms; a fast CPU streams 60 tokens in less
    snaps = []
    w.bridge.event.connect(lambda ev: snaps.append(ev.snapshot) if isinstance(ev, P.KVSnapshot) else None)
    mid, stats = send_and_wait(qtbot, w, "Count from one to twenty in words.")
    during = [s["used"] for s in snaps]
    assert any(0 < u < during[-1] for u in during), during            # snapshots came while it streamed
    with qtbot.waitSignal(w.bridge.event, timeout=10000, check_params_cb=lambda ev: isinstance(ev, P.KVSnapshot)):
        w.bridge.send(P.Snapshot())
    snap = w.dock.kv_map.snapshot
    (cache,) = snap["caches"]                                           # llama: one global cache
    runs = cache["cells"]
    assert sum(n for _, _, n in runs) == cache["total"] == 512
    assert sum(n for m, _, n in runs if m) == cache["used"] == snap["used"]
    assert {m for m, _, _ in runs} == {0, 1}                            # this chat (sequence 0) and free cells
    assert stats["prompt_tokens"] + stats["n_tokens"] - 1 <= cache["used"] <= stats["prompt_tokens"] + stats["n_tokens"]
    from app.telemetry.kv_map import cache_squares
    per, squares = cache_squares(cache, max_squares=512)
    assert per == 1 and sum(s.used for s in squares) == cache["used"]

    # the first snapshot is asked for as the reply starts and comes at its first token: the prompt's cells
    # show at once, not a timer tick later (with the timer out of the way, only that request and the one
    # after the reply remain). Counted from the reply's first token: the engine sends a snapshot asked for
    # before it after the token, and one still on its way from the reply above comes before it
    w.new_chat()
    w.kv_timer.setInterval(600000)
    seen, after_first = [], []
    w.bridge.token.connect(lambda *a: seen.append(1))
    w.bridge.event.connect(lambda ev: after_first.append(ev.snapshot["used"])
                           if isinstance(ev, P.KVSnapshot) and seen else None)
    mid, stats = send_and_wait(qtbot, w, "Count from one to ten in words.")
    assert stats["n_tokens"] >= 3, stats
    assert after_first and stats["prompt_tokens"] <= after_first[0] <= stats["prompt_tokens"] + stats["n_tokens"] - 2, \
        (after_first, stats)
