"""The Local server panel: off by default, a switch that starts `cellar serve` for the loaded model
(here a stand-in keeping its contract, tests/app/fake_serve.py), its URL to copy, requests in
flight from /health, loopback unless network access is allowed with an API key, and stop."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication

from app.local_server import LocalServer

FAKE = Path(__file__).with_name("fake_serve.py")


@pytest.fixture
def fake_serve(monkeypatch, tmp_path):
    args, state = tmp_path / "serve-args.json", tmp_path / "serve-state.json"
    monkeypatch.setattr(LocalServer, "command", staticmethod(lambda: [sys.executable, str(FAKE)]))
    monkeypatch.setenv("FAKE_SERVE_ARGS", str(args))
    monkeypatch.setenv("FAKE_SERVE_STATE", str(state))
    return args, state


def _argv(args_file: Path) -> list[str]:
    return json.loads(args_file.read_text())["argv"]


def _loaded(window, tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    window.server_dock.set_model(str(model), {"ctx": 1024, "kv_type": "q8_0"})
    return model


def test_off_by_default_and_needs_a_model(window):
    p = window.server_dock
    assert not p.switch.isChecked() and not p.switch.isEnabled()
    assert window.server.state == "off" and p.status.text() == "Load a model to serve it."
    assert not p.network.isChecked() and not p.api_key.isEnabled()


def test_switch_serves_on_loopback_shows_url_and_requests_then_stops(qtbot, window, fake_serve, tmp_path):
    args, state = fake_serve
    model = _loaded(window, tmp_path)
    p, server = window.server_dock, window.server
    p.port.setValue(0)                                   # any free port
    p.parallel.setValue(3)
    with qtbot.waitSignal(server.stateChanged, timeout=15000, check_params_cb=lambda s, d: s == "running"):
        p.switch.setChecked(True)
    argv = _argv(args)
    assert argv[:2] == ["serve", str(model)]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and "--api-key" not in argv
    assert argv[argv.index("--parallel") + 1] == "3" and argv[argv.index("--ctx") + 1] == "1024"
    assert argv[argv.index("--kv-type") + 1] == "q8_0"
    url = p.url.text()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1") and not p.port.isEnabled()
    p.copy_btn.click()
    assert QGuiApplication.clipboard().text() == url
    qtbot.waitUntil(lambda: "0 requests in flight" in p.status.text(), timeout=5000)

    state.write_text(json.dumps({"busy": 1, "queue": 2}))
    qtbot.waitUntil(lambda: "1 request in flight · 2 waiting" in p.status.text(), timeout=5000)
    assert "this computer only" in p.status.text()
    assert window.status.server.text() == f"serving {url} · 1 in flight, 2 waiting"

    pid = json.loads(args.read_text())["pid"]
    with qtbot.waitSignal(server.stateChanged, timeout=10000, check_params_cb=lambda s, d: s == "off"):
        p.switch.setChecked(False)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert p.url.text() == "" and p.status.text() == "Off" and p.port.isEnabled()
    assert window.status.server.text() == ""


def test_network_access_needs_an_api_key(qtbot, window, fake_serve, tmp_path, data_dir):
    args, _ = fake_serve
    _loaded(window, tmp_path)
    p, server = window.server_dock, window.server
    p.port.setValue(0)
    p.network.setChecked(True)
    assert p.api_key.isEnabled()
    p.switch.setChecked(True)                            # no key: refused, says why, nothing started
    assert not p.switch.isChecked() and server.state == "failed" and not args.exists()
    assert "needs an API key" in p.status.text()

    p.new_key.click()
    key = p.api_key.text()
    assert len(key) >= 16
    with qtbot.waitSignal(server.stateChanged, timeout=15000, check_params_cb=lambda s, d: s == "running"):
        p.switch.setChecked(True)
    argv = _argv(args)
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--api-key") + 1] == key
    assert p.url.text().startswith(f"http://{socket.gethostname()}:")
    assert not p.api_key.isEnabled()                     # not editable while serving
    saved = json.loads((data_dir / "config" / "settings.json").read_text())
    assert (saved["server_network"], saved["server_api_key"], saved["server_port"]) == (True, key, 0)
    with qtbot.waitSignal(server.stateChanged, timeout=10000, check_params_cb=lambda s, d: s == "off"):
        p.switch.setChecked(False)


def test_a_server_that_cannot_start_says_why_in_one_line(qtbot, window, fake_serve, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SERVE_FAIL", "1")
    _loaded(window, tmp_path)
    p = window.server_dock
    with qtbot.waitSignal(window.server.stateChanged, timeout=15000, check_params_cb=lambda s, d: s == "failed"):
        p.switch.setChecked(True)
    assert p.status.text() == ("Cannot listen on 127.0.0.1:8080 (Address already in use); pick another --port "
                               "or --host")
    assert not p.switch.isChecked() and p.switch.isEnabled() and p.port.isEnabled()
    assert window.notice.isVisible() and "Address already in use" in window.notice.label.text()


def test_a_server_a_dead_window_left_running_is_stopped_by_the_next_one(qtbot, fake_serve, tmp_path):
    import subprocess
    import time

    from app.local_server import pid_file
    from tests.app.conftest import make_window
    first = make_window(qtbot, start_engine=False)
    _loaded(first, tmp_path)
    first.server_dock.port.setValue(0)
    with qtbot.waitSignal(first.server.stateChanged, timeout=15000, check_params_cb=lambda s, d: s == "running"):
        first.server_dock.switch.setChecked(True)
    pid = json.loads(pid_file().read_text())["pid"]
    assert pid == first.server.proc.processId()
    first.server.proc.finished.disconnect()        # as if this window died: nobody stops its server
    first.server.proc.setParent(None)

    second = make_window(qtbot, start_engine=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        first.server.proc.waitForFinished(100)    # reap it, as the dead window's process would be
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not pid_file().exists()
    assert "earlier window" in second.status.currentMessage()

    # a pid file naming some other program is dropped without touching it
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pid_file().write_text(json.dumps({"pid": other.pid, "port": 8080}))
        make_window(qtbot, start_engine=False)
        assert other.poll() is None and not pid_file().exists()
    finally:
        other.kill()
        other.wait()
