"""The main window without a running engine: dropping files, the preview's numbers, settings."""
from __future__ import annotations

import json
import zipfile

from app.dialogs.load_preview import LoadPreviewDialog
from app.settings import AppSettings
from tests.app.window_helpers import drag_enter, drop


def test_drop_a_gguf_shows_the_preview_with_the_planners_numbers(qtbot, window, smollm2_path):
    from engine.gguf import GGUFFile
    from engine.memory import Settings, plan

    ev = drag_enter(window, smollm2_path)
    assert ev.isAccepted() and window.overlay.isVisible() and window.overlay.text == "Drop to preview"
    with qtbot.waitSignal(window.loader.previewShown, timeout=10000) as shown:
        drop(window, smollm2_path)
    assert not window.overlay.isVisible()
    d: LoadPreviewDialog = shown.args[0]
    qtbot.waitUntil(lambda: d.plan is not None, timeout=10000)
    assert d.info["Architecture"].text() == "llama"
    assert d.info["Trained context"].text() == "8192 tokens"
    assert "Q4_1" in d.info["Quantization"].text() and "Q8_0" in d.info["Quantization"].text()
    with GGUFFile.open(smollm2_path, read_data=False) as g:
        want = plan(g, Settings(**d.plan_settings())).to_json()
    for key in ("ram", "vram", "settings", "items", "layers"):
        assert d.plan[key] == want[key], key
    assert d.bars["ram"].parts == {k: want["ram"][k] for k in ("weights", "kv", "compute", "overhead")}
    assert d.verdict.text().split(":")[0].lower() in ("fits", "tight", "won't fit")

    # the context slider re-plans: KV grows with the context
    kv_before = d.plan["ram"]["kv"]
    d.ctx_slider.setValue(d.ctx_slider.value() // 2)
    qtbot.waitUntil(lambda: d.plan["settings"]["ctx"] == d.plan_settings()["ctx"], timeout=10000)
    assert d.plan["ram"]["kv"] * 2 == kv_before
    with GGUFFile.open(smollm2_path, read_data=False) as g:
        assert d.plan["ram"] == plan(g, Settings(**d.plan_settings())).to_json()["ram"]
    d.reject()
    assert window.model is None


def test_drop_a_zip_says_so_and_nothing_changes(qtbot, window, tmp_path):
    z = tmp_path / "model.gguf"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("weights.bin", b"\0" * 64)
    shown = []
    window.loader.previewShown.connect(shown.append)
    title, top = window.windowTitle(), window.top.model_btn.text()
    with qtbot.waitSignal(window.loader.notice, timeout=5000) as msg:
        drop(window, z)
    assert msg.args[0].startswith("This file is not a GGUF model (it starts with 'PK', a zip archive")
    qtbot.waitUntil(window.notice.isVisible)
    assert window.notice.label.text() == msg.args[0]
    assert shown == [] and window.loader.dialog is None
    assert (window.windowTitle(), window.top.model_btn.text()) == (title, top)
    assert window.chat.stack.currentWidget() is window.chat.welcome


def test_truncated_gguf_gets_one_line(qtbot, window, tmp_path, smollm2_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(smollm2_path.read_bytes()[:4096])
    with qtbot.waitSignal(window.loader.notice, timeout=5000) as msg:
        drop(window, bad)
    assert "\n" not in msg.args[0] and "cut.gguf" in msg.args[0]
    assert window.loader.dialog is None


def test_settings_change_is_saved_applied_and_asks_before_a_reload(qtbot, window, data_dir):
    from engine import protocol as P
    new = window.settings.copy()
    new.temperature, new.theme = 0.25, "dark"
    asked = []
    window.apply_settings(new, confirm_reload=lambda changed: asked.append(changed) or True)
    saved = json.loads((data_dir / "config" / "settings.json").read_text())
    assert (saved["temperature"], saved["theme"]) == (0.25, "dark")
    assert window.controller.sampling()["temperature"] == 0.25
    qtbot.waitUntil(lambda: window.palette().window().color().lightness() < 100, timeout=2000)   # dark applied
    assert asked == []                              # nothing that needs a reload
    # a load-time change with a model loaded: asked, then a Load with the new context is sent
    window.model = P.ModelLoaded("/m/x.gguf", "llama", 4096, 10, 0.1, {})
    sent = []
    window.loader.load = lambda path, fields: sent.append((path, fields))
    newer = window.settings.copy()
    newer.ctx = 1024
    window.apply_settings(newer, confirm_reload=lambda changed: asked.append(changed) or True)
    assert asked == [["ctx"]] and sent == [("/m/x.gguf", newer.load_fields())] and sent[0][1]["ctx"] == 1024
    assert AppSettings.load().ctx == 1024
    window.apply_settings(AppSettings.load(), confirm_reload=lambda c: False)   # theme back for other tests
    from app.theme import apply_theme
    from PySide6.QtWidgets import QApplication
    apply_theme(QApplication.instance(), "system")


def test_sidebar_new_rename_delete_search(qtbot, window):
    s = window.store
    a = s.create_conversation("Python lists")
    b = s.create_conversation("Trip ideas")
    s.add_message(b.id, None, "user", "beaches in autumn")
    window.sidebar.refresh()
    assert set(window.sidebar.ids()) == {a.id, b.id}
    window.sidebar.search.setText("autumn")
    assert window.sidebar.ids() == [b.id]
    window.sidebar.search.clear()
    window.sidebar.rename(a.id, "Reversing lists")
    assert s.conversation(a.id).title == "Reversing lists"
    window.controller.open_conversation(b.id)
    assert [w.text for w in window.chat.widgets.values()] == ["beaches in autumn"]
    window.sidebar.delete(b.id)
    assert window.sidebar.ids() == [a.id] and window.controller.conversation_id is None
    assert window.chat.widgets == {}


def test_window_geometry_and_dock_remembered(qtbot, data_dir):
    from tests.app.conftest import make_window
    w = make_window(qtbot, start_engine=False)
    w.resize(700, 520)
    w.dock.hide()
    w.close()
    w2 = make_window(qtbot, start_engine=False)
    assert (w2.width(), w2.height()) == (700, 520)
    assert not w2.dock.isVisible()
    w2.close()


def test_a_reply_says_when_earlier_messages_were_left_out(qtbot):
    from app.chat.message_widget import MessageWidget
    w = MessageWidget("m1", "assistant", "Hello.")
    qtbot.addWidget(w)
    w.set_stats({"tok_s": 200.0, "n_tokens": 12, "stop_reason": "eos", "left_out": 4})
    assert "4 earlier messages left out" in w.stats_label.text()
    assert "larger context" in w.stats_label.toolTip()
    w.set_stats({"tok_s": 200.0, "n_tokens": 12, "stop_reason": "eos"})
    assert "left out" not in w.stats_label.text()


def test_a_reply_with_reasoning_shows_it_apart(qtbot):
    """Qwen3 / DeepSeek-R1 replies open with a <think> block: quoted under "Thinking…" while it is open,
    "Thought" once closed, the answer after it; an empty block (thinking off) shows the answer alone; the
    [copy] links count the answer's code blocks only."""
    from PySide6.QtCore import QUrl
    from PySide6.QtGui import QGuiApplication

    from app.chat.message_widget import MessageWidget
    w = MessageWidget("m1", "assistant", "")
    qtbot.addWidget(w)
    w.set_text("<think>\nThe user wants a name", now=True)
    shown = w.body.toPlainText()
    assert "Thinking…" in shown and "The user wants a name" in shown and "<think>" not in shown
    w.set_text("<think>\nThe user wants a name.\n```\nnot this\n```\n</think>\n\nWhiskers.\n```\nprint('hi')\n```",
               now=True)
    shown = w.body.toPlainText()
    assert "Thought" in shown and "Thinking…" not in shown and "Whiskers." in shown and "</think>" not in shown
    w._link(QUrl("copy:0"))
    assert QGuiApplication.clipboard().text() == "print('hi')"
    w.set_text("<think>\n\n</think>\n\nHello there.", now=True)
    assert w.body.toPlainText().strip() == "Hello there."
    assert w.text == "<think>\n\n</think>\n\nHello there."            # the reply itself is kept as it came
