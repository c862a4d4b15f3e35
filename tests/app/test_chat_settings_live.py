"""A conversation's own sampling and system prompt reach the real engine (SmolLM2)."""
from __future__ import annotations

import pytest

from tests.app.test_window_live import live, send_and_wait  # noqa: F401  (live is a fixture)

pytestmark = pytest.mark.slow


def test_own_reply_length_and_system_prompt_reach_the_engine(qtbot, live):  # noqa: F811
    w = live                                     # Settings: max_tokens 12, temperature 0
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
