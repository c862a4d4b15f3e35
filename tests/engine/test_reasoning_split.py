"""The server's reasoning split (engine/server_api.py ReasoningSplit), as llama-server's reasoning_format
"deepseek": a chat reply's <think> block goes to reasoning_content, the answer to content, however the
text is cut into streamed pieces."""
from __future__ import annotations

import pytest

from engine.server_api import ApiError, ReasoningSplit, chat_response, reasoning_format, split_reasoning

REPLY = "<think>\nThe user wants a name.\n\nBoxes, naps: Boxer.\n</think>\n\nA good name is **Boxer**.\n"


def streamed(text: str, step: int, opened: bool = False) -> tuple[str, str, list]:
    s = ReasoningSplit(opened)
    parts = []
    for i in range(0, len(text), step):
        parts += s.feed(text[i:i + step])
    parts += s.finish()
    assert all(t for _, t in parts)                      # no empty deltas
    return ("".join(t for f, t in parts if f == "reasoning_content"),
            "".join(t for f, t in parts if f == "content"), parts)


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13, 1000])
def test_any_cut_gives_the_same_split(step):
    r, c, parts = streamed(REPLY, step)
    assert (r, c) == ("The user wants a name.\n\nBoxes, naps: Boxer.", "A good name is **Boxer**.\n")
    fields = [f for f, _ in parts]
    assert fields == sorted(fields, key=lambda f: f != "reasoning_content")    # all reasoning, then content
    assert split_reasoning(REPLY) == (r, c)


@pytest.mark.parametrize("text, opened, want", [
    ("Just an answer <think> inside.", False, (None, "Just an answer <think> inside.")),
    ("Let me think.\n</think>\n\nHi!", True, ("Let me think.", "Hi!")),       # the prompt opened the block
    ("<think>\n\n</think>\n\nNo thinking.", False, ("", "No thinking.")),    # thinking turned off
    ("<think>\nstill going\n", False, ("still going", "")),                  # cut off inside the block
    ("  <thi", False, (None, "  <thi")),                                      # a tag's start that never came
    ("", False, (None, "")),
])
def test_the_cases(text, opened, want):
    assert split_reasoning(text, opened) == want
    assert streamed(text, 1, opened)[:2] == (want[0] or "", want[1])


def test_response_and_request_field():
    msg = chat_response("id", "m", "Hi", "stop", 3, 2, "thought")["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "Hi", "reasoning_content": "thought"}
    assert "reasoning_content" not in chat_response("id", "m", "Hi", "stop", 3, 2, "")["choices"][0]["message"]
    assert reasoning_format({}) == "auto" and reasoning_format({"reasoning_format": "none"}) == "none"
    with pytest.raises(ApiError, match="reasoning_format"):
        reasoning_format({"reasoning_format": "raw"})
