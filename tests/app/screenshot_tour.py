"""Screenshots of the real window with the real engine, for docs/screenshots/.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m tests.app.screenshot_tour [OUT_DIR]

Loads SmolLM2, asks a question and grabs the window mid-reply, grabs the telemetry dock, opens the
load preview for Gemma-3, then loads Gemma-3 to show its sliding-window cache beside the global one."""
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
    loaded = []
    w.bridge.modelLoaded.connect(loaded.append)
    w.loader.load(str(pull("smollm2")), settings.load_fields())
    wait(lambda: loaded)
    wait(lambda: len(w.dock.graphs.samples) >= 3)

    tokens, done, shot = [], [], {}
    w.bridge.token.connect(lambda *a: tokens.append(a))
    w.controller.replyFinished.connect(lambda *a: done.append(a))

    def grab_mid(*_):
        if len(tokens) == 70 and "mid" not in shot:
            shot["mid"] = w.grab()
    w.bridge.token.connect(grab_mid)
    w.chat.input.setPlainText("How do I reverse a list in Python? Show a short code example.")
    w.chat._submit(w.chat.input.toPlainText())
    wait(lambda: done)
    (shot.get("mid") or w.grab()).save(str(out / "main_window_mid_reply.png"))
    w.bridge.send(__import__("engine.protocol", fromlist=["Snapshot"]).Snapshot())
    wait(lambda: w.dock.kv_map.snapshot.get("used", 0) > 0, 30)
    w.grab().save(str(out / "main_window_after_reply.png"))
    w.dock.grab().save(str(out / "telemetry_dock.png"))

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
    w.chat._submit("Write a haiku about a cellar.")
    wait(lambda: done)
    w.bridge.send(__import__("engine.protocol", fromlist=["Snapshot"]).Snapshot())
    wait(lambda: len(w.dock.kv_map.caches()) == 2 and w.dock.kv_map.snapshot.get("used", 0) > 0, 30)
    w.dock.grab().save(str(out / "telemetry_dock_gemma3_swa.png"))
    w.bridge.stop_blocking()
    store.close()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    target.mkdir(parents=True, exist_ok=True)
    main(target)
