"""The Qt adapter over the engine client: events arrive as signals on the GUI thread."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from engine import protocol as P

pytest.importorskip("pytestqt")


@pytest.fixture
def bridge(qtbot):
    from app.engine_bridge import EngineBridge
    b = EngineBridge()
    yield b
    b.stop_blocking()


def test_signals_arrive_on_gui_thread_and_crash_is_reported(qtbot, bridge):
    gui = threading.current_thread()
    seen_threads = set()
    bridge.event.connect(lambda ev: seen_threads.add(threading.current_thread()))
    with qtbot.waitSignal(bridge.stateChanged, timeout=30000,
                          check_params_cb=lambda state, detail: state == "idle"):
        bridge.start()
    # no model loaded: a typed error for the request, then its GenerationDone
    errors, done = [], []
    bridge.error.connect(lambda *a: errors.append(a))
    bridge.generationDone.connect(done.append)
    with qtbot.waitSignal(bridge.generationDone, timeout=10000):
        assert bridge.send(P.Generate("g1", prompt="hi", max_tokens=4))
    kind, message, rid = errors[0]
    assert (kind, rid) == (P.ErrorKind.BAD_INPUT.value, "g1")
    assert "no model is loaded" in message
    assert [d.stop_reason for d in done] == ["error"]

    with qtbot.waitSignal(bridge.crashed, timeout=3000) as crash:
        os.kill(bridge.client.pid, signal.SIGKILL)
    detail, code, sig = crash.args
    assert (code, sig) == (-9, "SIGKILL") and "SIGKILL" in detail
    assert seen_threads == {gui}

    # a request to a dead engine becomes an error signal, not an exception
    with qtbot.waitSignal(bridge.error, timeout=1000) as err:
        assert bridge.send(P.Snapshot()) is False
    assert err.args[0] == P.ErrorKind.ENGINE_CRASHED.value

    with qtbot.waitSignal(bridge.stateChanged, timeout=30000,
                          check_params_cb=lambda state, detail: state == "idle"):
        bridge.restart()
    assert bridge.state is P.EngineState.IDLE
