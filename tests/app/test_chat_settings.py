"""A conversation's own system prompt and sampling: edited from the chat's header, kept in the store,
sent with every reply of that conversation and only that one."""
from __future__ import annotations

from PySide6.QtCore import Qt

from engine import protocol as P


def _record_generate(window):
    sent = []

    def generate(**fields):                   # as EngineBridge.generate, without an engine
        fields.setdefault("request_id", f"r{len(sent) + 1}")
        sent.append(fields)
        return fields["request_id"]
    window.bridge.generate = generate
    return sent


def _finish(window, rid: str, text: str = "ok") -> None:
    window.controller._on_done(P.GenerationDone(rid, "eos", text=text, n_tokens=1))


def _show_thread(window):
    window.chat.show_welcome(False)           # as after a model loaded


def test_header_button_edits_a_new_chat_and_its_first_reply_uses_them(qtbot, window):
    _show_thread(window)
    sent = _record_generate(window)
    header = window.chat.header
    assert header.isVisible() and header.prompt.full == "No system prompt"
    assert "temp 0.8" in header.figures.full and "seed random" in header.figures.full
    qtbot.mouseClick(header.edit_btn, Qt.MouseButton.LeftButton)
    d = window.chat_settings_dialog
    assert d is not None and d.isVisible() and d.system.toPlainText() == ""
    assert (d.temperature.value(), d.top_k.value(), d.seed.text()) == (0.8, 40, "random")
    d.system.setPlainText("You answer like a pirate.")
    d.temperature.setValue(0.3)
    d.seed.setValue(42)
    d.max_tokens.setValue(7)
    d.repeat_penalty.setValue(1.1)
    d.accept()
    assert header.prompt.full.startswith("System: You answer like a pirate")
    assert all(s in header.figures.full for s in ("temp 0.3", "seed 42", "≤ 7 tokens", "repeat ×1.1"))

    window.controller.send("Where is the treasure?")
    conv = window.store.conversation(window.controller.conversation_id)
    assert conv.system_prompt == "You answer like a pirate."
    assert conv.sampling["temperature"] == 0.3 and conv.sampling["seed"] == 42
    g = sent[-1]
    assert g["messages"][0] == {"role": "system", "content": "You answer like a pirate."}
    assert g["messages"][1] == {"role": "user", "content": "Where is the treasure?"}
    assert (g["temperature"], g["seed"], g["max_tokens"], g["repeat_penalty"]) == (0.3, 42, 7, 1.1)
    assert (g["top_k"], g["top_p"], g["min_p"]) == (40, 0.95, 0.05)         # the defaults, untouched
    P.Generate(**g)                                                          # every field is Generate's
    _finish(window, g["request_id"])

    # a new chat starts from the defaults again; the old one keeps its own
    window.new_chat()
    _show_thread(window)
    assert header.prompt.full == "No system prompt" and "temp 0.8" in header.figures.full
    window.controller.send("Hello")
    assert sent[-1]["messages"][0]["role"] == "user" and sent[-1]["temperature"] == 0.8
    assert sent[-1]["seed"] is None
    _finish(window, sent[-1]["request_id"])
    window.open_conversation(conv.id)
    assert "seed 42" in header.figures.full
    window.controller.send("And the map?")
    assert sent[-1]["seed"] == 42 and sent[-1]["messages"][0]["content"] == "You answer like a pirate."
    _finish(window, sent[-1]["request_id"])


def test_editing_an_existing_chat_changes_its_next_reply_cancel_keeps_it(qtbot, window):
    _show_thread(window)
    sent = _record_generate(window)
    c = window.store.create_conversation("Old", system_prompt="Be brief.", sampling={"temperature": 0.1, "top_k": 5})
    window.open_conversation(c.id)
    d = window.open_chat_settings()
    assert d.system.toPlainText() == "Be brief." and d.temperature.value() == 0.1 and d.top_k.value() == 5
    d.system.setPlainText("Be thorough.")
    d.reject()
    assert window.store.conversation(c.id).system_prompt == "Be brief."

    d = window.open_chat_settings()
    d.use_defaults()                                   # sampling back to Settings' values, prompt kept
    assert (d.temperature.value(), d.top_k.value()) == (0.8, 40)
    d.system.setPlainText("Be thorough.")
    d.top_p.setValue(0.5)
    d.accept()
    stored = window.store.conversation(c.id)
    assert stored.system_prompt == "Be thorough." and stored.sampling["top_p"] == 0.5
    window.controller.send("Why is the sky blue?")
    g = sent[-1]
    assert g["messages"][0]["content"] == "Be thorough." and (g["temperature"], g["top_k"], g["top_p"]) == (0.8, 40, 0.5)
    _finish(window, g["request_id"])


def test_unknown_keys_in_a_stored_chat_are_not_sent(window):
    from app.dialogs.chat_settings import generate_fields
    f = generate_fields({"temperature": 0.8, "top_k": 40, "max_tokens": 9}, {"temperature": 0.2, "mirostat": 2})
    assert f == {"temperature": 0.2, "top_k": 40, "max_tokens": 9}
