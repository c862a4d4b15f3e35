"""EngineClient: process lifecycle, states, crash detection and restart."""
from __future__ import annotations

import os
import signal
import time

import pytest

from engine import protocol as P
from engine.client import EngineClient, describe_exit
from engine.errors import CellarError
from tests.engine.engine_helpers import Recorder, load, started_client


def test_describe_exit():
    assert describe_exit(-9) == ("was killed by SIGKILL (exit code -9)", "SIGKILL")
    assert describe_exit(-11)[1] == "SIGSEGV"
    assert describe_exit(1) == ("exited with code 1", None)


def test_events_go_to_a_queue_without_a_callback():
    client = EngineClient()
    client.start()
    try:
        first = [client.events.get(timeout=30) for _ in range(3)]
        assert [type(e) for e in first] == [P.StateChanged, P.Hello, P.StateChanged]
        assert first[1].protocol_version == P.PROTOCOL_VERSION and first[1].pid == client.pid
        assert first[2].state is P.EngineState.IDLE and client.state is P.EngineState.IDLE
    finally:
        client.stop()
    assert client.state is P.EngineState.STOPPED and client.last_exit == (0, None)
    with pytest.raises(CellarError) as err:
        client.send(P.Snapshot())
    assert err.value.kind is P.ErrorKind.ENGINE_CRASHED


def test_segfault_is_reported_with_its_signal():
    client, rec = started_client()
    try:
        t0 = time.perf_counter()
        os.kill(client.pid, signal.SIGSEGV)
        assert client.wait_state(P.EngineState.CRASHED, 1.0)
        assert time.perf_counter() - t0 < 1.0
        crash = rec.wait_for(lambda e: isinstance(e, P.StateChanged) and e.state is P.EngineState.CRASHED, 1)
        assert (crash.exit_code, crash.signal_name) == (-11, "SIGSEGV")
        err = rec.wait_for(lambda e: isinstance(e, P.Error), 1)
        assert err.kind is P.ErrorKind.ENGINE_CRASHED and "SIGSEGV" in err.message
    finally:
        client.stop()


def test_kill_during_generation_then_restart_reloads(smollm2_path):
    pytest.importorskip("engine.runtime")
    client, rec = started_client()
    try:
        load(client, rec, smollm2_path)
        mark = rec.mark()
        client.send(P.Generate("k1", prompt="Once upon a time", max_tokens=300, temperature=0.0))
        rec.wait_for(lambda e: isinstance(e, P.Token), 60, mark)
        old_pid = client.pid
        t0 = time.perf_counter()
        os.kill(old_pid, signal.SIGKILL)
        assert client.wait_state(P.EngineState.CRASHED, 1.0)
        detect_s = time.perf_counter() - t0
        assert detect_s < 1.0
        crash = rec.wait_for(lambda e: isinstance(e, P.StateChanged) and e.state is P.EngineState.CRASHED, 1, mark)
        assert crash.signal_name == "SIGKILL" and crash.exit_code == -9
        done = rec.done("k1", 1, mark)            # the reply in flight is closed, with a typed error
        assert done.stop_reason == "error"
        assert rec.wait_for(lambda e: isinstance(e, P.Error) and e.request_id == "k1", 1, mark).kind \
            is P.ErrorKind.ENGINE_CRASHED

        mark = rec.mark()
        client.restart()                          # reloads the last model
        assert client.pid != old_pid
        loaded = rec.wait_for(lambda e: isinstance(e, (P.ModelLoaded, P.Error)), 120, mark)
        assert isinstance(loaded, P.ModelLoaded) and loaded.n_ctx == 512
        assert client.wait_state(P.EngineState.IDLE, 10)
        client.send(P.Generate("k2", prompt="Once upon a time", max_tokens=4, temperature=0.0))
        assert rec.done("k2", 60, mark).n_tokens == 4
    finally:
        client.stop()


def test_restart_restores_the_saved_session(smollm2_path, tmp_path):
    pytest.importorskip("engine.runtime")
    pytest.importorskip("engine.session")
    client, rec = started_client()
    try:
        load(client, rec, smollm2_path)
        mark = rec.mark()
        chat = [{"role": "user", "content": "Say hi."}]
        client.send(P.Generate("s1", messages=chat, max_tokens=6, temperature=0.0, conversation_id="c"))
        first = rec.done("s1", 60, mark)
        path = str(tmp_path / "c.session")
        client.send(P.SaveSession(path, "c"))
        saved = rec.wait_for(lambda e: isinstance(e, (P.SessionSaved, P.Error)), 30, mark)
        assert isinstance(saved, P.SessionSaved) and saved.n_tokens == first.prompt_tokens + first.n_tokens
        os.kill(client.pid, signal.SIGKILL)
        assert client.wait_state(P.EngineState.CRASHED, 1.0)
        mark = rec.mark()
        client.restart()
        restored = rec.wait_for(lambda e: isinstance(e, (P.SessionRestored, P.Error)), 120, mark)
        assert isinstance(restored, P.SessionRestored) and restored.n_tokens == saved.n_tokens
        assert restored.messages[-1]["role"] == "assistant"
        turn2 = restored.messages + [{"role": "user", "content": "Again."}]
        client.send(P.Generate("s2", messages=turn2, max_tokens=3, temperature=0.0, conversation_id="c"))
        second = rec.done("s2", 60, mark)
        assert second.n_eval < second.prompt_tokens - saved.n_tokens + 8   # the restored cache is reused
    finally:
        client.stop()


def test_recorder_times_out_loudly():
    rec = Recorder()
    with pytest.raises(AssertionError):
        rec.wait_for(lambda e: True, 0.05)
