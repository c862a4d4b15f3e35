"""The main window with the real engine process and the real SmolLM2: streaming, stop, regenerate,
edit and branches, and an engine killed under the window."""
from __future__ import annotations

import os
import signal

import pytest
from PySide6.QtCore import Qt

from tests.app.conftest import make_window

pytestmark = pytest.mark.slow


@pytest.fixture
def live(qtbot, smollm2_path):
    w = make_window(qtbot, start_engine=True)
    w.settings.max_tokens = 12
    w.settings.temperature = 0.0
    qtbot.waitUntil(lambda: w.bridge.state.value == "idle", timeout=60000)
    with qtbot.waitSignal(w.bridge.modelLoaded, timeout=180000):
        w.loader.load(str(smollm2_path), {**w.settings.load_fields(), "ctx": 512})
    yield w
    w.bridge.stop_blocking()
    w.store.close()


def click(qtbot, w, button):
    """Scroll the button into view first: a click lands where the pointer is, like a person's."""
    w.chat.scroll.ensureWidgetVisible(button)
    qtbot.waitUntil(lambda: not button.visibleRegion().isEmpty(), timeout=2000)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def send_and_wait(qtbot, w, text: str, timeout=120000):
    w.chat.input.setFocus()
    qtbot.keyClicks(w.chat.input, text)
    with qtbot.waitSignal(w.controller.replyFinished, timeout=timeout) as done:
        qtbot.keyClick(w.chat.input, Qt.Key.Key_Return)
    return done.args


def test_chat_streams_stops_regenerates_and_branches(qtbot, live):
    w = live
    assert w.chat.stack.currentWidget() is w.chat.scroll and "ctx 512" in w.top.load_info.text()
    streamed = []
    w.bridge.token.connect(lambda rid, tid, text: streamed.append(text))
    mid, stats = send_and_wait(qtbot, w, "What is the capital of France?")
    reply = w.store.message(mid)
    assert reply.complete and reply.content.strip() and reply.content == w.chat.widget(mid).text
    assert "".join(streamed).strip() == reply.content.strip() and len(streamed) > 1
    assert stats["tok_s"] > 0 and stats["ttft_s"] > 0 and stats["n_tokens"] == len(streamed) or stats["n_tokens"] > 0
    assert "tok/s" in w.chat.widget(mid).stats_label.text()
    conv = w.controller.conversation_id
    assert w.sidebar.ids() == [conv]
    assert w.status.gauge.value() > 0 and w.status.gauge.maximum() == 512

    # stop: Esc while the reply streams; the text so far is kept and saved
    w.settings.max_tokens = 200
    w.chat.input.setFocus()
    qtbot.keyClicks(w.chat.input, "Count from one to one hundred.")
    with qtbot.waitSignal(w.bridge.token, timeout=120000):
        qtbot.keyClick(w.chat.input, Qt.Key.Key_Return)
    assert w.chat.stop_btn.isVisible() and not w.chat.send_btn.isVisible()
    with qtbot.waitSignal(w.controller.replyFinished, timeout=60000) as done:
        qtbot.keyClick(w, Qt.Key.Key_Escape)
    stopped_id, stats = done.args
    assert stats["stop_reason"] == "cancelled" and stats["n_tokens"] < 200
    assert w.store.message(stopped_id).content == w.chat.widget(stopped_id).text
    assert w.chat.send_btn.isVisible()

    # regenerate the first reply: a second version, navigable ◀ 2/2 ▶
    w.settings.max_tokens, w.settings.temperature = 8, 1.0
    first = w.chat.widget(mid)
    with qtbot.waitSignal(w.controller.replyFinished, timeout=120000) as done:
        click(qtbot, w, first.regen_btn)
    new_id = done.args[0]
    assert [m.id for m in w.store.siblings(mid)] == [mid, new_id]
    assert w.chat.widget(new_id).branch_label.text() == "2/2"
    assert stopped_id not in w.chat.widgets              # the later turn belongs to the first version
    click(qtbot, w, w.chat.widget(new_id).prev_btn)
    assert w.chat.widget(mid).branch_label.text() == "1/2" and stopped_id in w.chat.widgets

    # edit the first question and resend: a sibling user message with its own reply
    user_id = w.store.message(mid).parent_id
    uw = w.chat.widget(user_id)
    click(qtbot, w, uw.edit_btn)
    assert uw.editor.isVisible()
    uw.editor.setPlainText("What is the capital of Italy?")
    with qtbot.waitSignal(w.controller.replyFinished, timeout=120000) as done:
        click(qtbot, w, uw.save_btn)
    thread = w.store.thread(conv)
    assert [m.role for m in thread] == ["user", "assistant"]
    assert thread[0].content == "What is the capital of Italy?" and thread[1].id == done.args[0]
    edited = w.chat.widget(thread[0].id)
    assert edited.branch_label.text() == "2/2" and edited.prev_btn.isEnabled()
    click(qtbot, w, edited.prev_btn)
    assert w.store.thread(conv)[0].id == user_id        # the original question and its branch are back


def test_killed_engine_shows_banner_keeps_chat_and_restarts(qtbot, live):
    w = live
    mid, _ = send_and_wait(qtbot, w, "Hello!")
    before = list(w.chat.widgets)
    with qtbot.waitSignal(w.bridge.crashed, timeout=10000):
        os.kill(w.bridge.client.pid, signal.SIGKILL)
    qtbot.waitUntil(w.chat.banner.isVisible, timeout=5000)
    assert "SIGKILL" in w.chat.banner.label.text() and "conversation is kept" in w.chat.banner.label.text()
    assert list(w.chat.widgets) == before and w.status.engine.text() == "engine: crashed"
    with qtbot.waitSignal(w.bridge.modelLoaded, timeout=180000):
        qtbot.mouseClick(w.chat.banner.button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.chat.banner.isVisible(), timeout=10000)
    mid2, stats = send_and_wait(qtbot, w, "And again?")
    assert w.store.message(mid2).content.strip() and stats["stop_reason"] in ("length", "eos", "stop")
    assert [m.role for m in w.store.thread(w.controller.conversation_id)] == ["user", "assistant"] * 2
