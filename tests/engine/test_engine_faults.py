"""Engine faults seen from the client: a real segfault, an out-of-memory load under a memory cap, a hung
worker (stopped mid-reply, or never saying Hello), no false alarm while the worker is busy, and a
later request starting a fresh worker. Each is one line the app can show; the app never goes down."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from engine import protocol as P
from engine.client import EngineClient
from tests.engine.engine_helpers import Recorder, load
from tests.engine.fault_targets import segfault_after_hello, silent
from tests.ggufgen import tiny_llama

S = P.EngineState


def client_with(**kw) -> tuple[EngineClient, Recorder]:
    rec = Recorder()
    client = EngineClient(on_event=rec, **kw)
    client.start()
    return client, rec


def crash_error(rec: Recorder, since: int = 0, timeout: float = 5) -> P.Error:
    return rec.wait_for(lambda e: isinstance(e, P.Error) and e.kind is P.ErrorKind.ENGINE_CRASHED
                        and e.request_id is None, timeout, since)


def vm_size(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("faults") / "tiny.gguf", n_ctx=4096)


def test_real_segfault_is_reported():
    client, rec = client_with(target=segfault_after_hello)
    try:
        assert client.wait_state(S.CRASHED, 30)
        crash = rec.wait_for(lambda e: isinstance(e, P.StateChanged) and e.state is S.CRASHED, 1)
        assert (crash.exit_code, crash.signal_name) == (-11, "SIGSEGV")
        err = crash_error(rec)
        assert "SIGSEGV" in err.message and "\n" not in err.message
    finally:
        client.stop()


def test_no_hello_within_the_timeout_is_a_hang():
    client, rec = client_with(target=silent, ping_interval=0.2, hello_timeout=1.5)
    try:
        assert client.wait_state(S.CRASHED, 15)
        err = crash_error(rec)
        assert err.message == "the engine did not start: no answer within 1.5 s and was stopped; restart it to go on"
        assert client.last_exit[1] == "SIGKILL" and not client.alive
    finally:
        client.stop()


def test_stopped_worker_mid_reply_is_reported_hung_and_a_later_request_restarts_it(tiny):
    client, rec = client_with(ping_interval=0.2, hang_timeout=2.0, auto_restart=True)
    try:
        assert client.wait_state(S.IDLE, 60)
        load(client, rec, tiny, ctx=4096)
        mark = rec.mark()
        client.send(P.Generate("h1", prompt="!!", max_tokens=3000, temperature=1.0, seed=1))
        rec.wait_for(lambda e: isinstance(e, P.Token), 60, mark)
        old = client.pid
        t0 = time.monotonic()
        os.kill(old, signal.SIGSTOP)                 # the worker freezes: no tokens, no pongs, no telemetry
        assert client.wait_state(S.CRASHED, 15)
        took = time.monotonic() - t0
        assert 2.0 <= took < 10, took
        err = crash_error(rec, mark)
        assert re.fullmatch(r"the engine stopped responding \(no answer for \d+ s\) and was stopped; "
                            r"restart it to go on", err.message), err.message
        done = rec.done("h1", 2, mark)
        assert done.stop_reason == "error"
        assert rec.wait_for(lambda e: isinstance(e, P.Error) and e.request_id == "h1", 1, mark).kind \
            is P.ErrorKind.ENGINE_CRASHED
        with pytest.raises(ProcessLookupError):
            for _ in range(50):                      # killed, not left stopped
                os.kill(old, 0)
                time.sleep(0.05)

        mark = rec.mark()
        client.send(P.Generate("h2", prompt="!!", max_tokens=4, temperature=0.0))   # starts a fresh worker
        assert client.pid != old
        assert isinstance(rec.wait_for(lambda e: isinstance(e, (P.ModelLoaded, P.Error)), 120, mark), P.ModelLoaded)
        assert rec.done("h2", 60, mark).n_tokens == 4
    finally:
        client.stop()


@pytest.mark.slow
def test_busy_worker_is_not_taken_for_hung(smollm2_path):
    """A long prefill (~3300 tokens, several ubatches; seconds even on an idle machine) keeps the main thread
    busy; the reader thread still answers pings.
    (Loading is not held to 1 s: importing torch and building a tokenizer hold the GIL for seconds,
    which is why the default hang timeout is 45 s.)"""
    client, rec = client_with(ping_interval=0.1)
    try:
        assert client.wait_state(S.IDLE, 60)
        load(client, rec, smollm2_path, ctx=4096, ubatch=512, batch=512)
        client.hang_timeout = 1.5
        mark = rec.mark()
        t0 = time.monotonic()
        client.send(P.Generate("b1", prompt="The quick brown fox jumps over the lazy dog. " * 300, max_tokens=8,
                               temperature=0.0))
        done = rec.done("b1", 300, mark)
        took = time.monotonic() - t0
        assert took > 2 * client.hang_timeout, f"the reply took {took:.1f} s: too short to show anything"
        assert done.stop_reason == "length" and client.wait_state(S.IDLE, 10)
        assert not [e for e in rec.events[mark:] if isinstance(e, P.Error)]
    finally:
        client.stop()


@pytest.mark.slow
def test_out_of_memory_under_a_cap_names_model_size_and_cap(tiny, smollm2_path):
    """The worker's address space is capped just above what a tiny model needs: loading SmolLM2 fails
    as out of memory (not a crash, not an internal error), and the worker still loads the tiny one."""
    client, rec = client_with()
    try:
        assert client.wait_state(S.IDLE, 60)
        load(client, rec, tiny, ctx=256)
        base = vm_size(client.pid)
    finally:
        client.stop()
    cap = base + 48 * 2**20
    client, rec = client_with(memory_limit=cap)
    try:
        assert client.wait_state(S.IDLE, 60)
        load(client, rec, tiny, ctx=256)                 # the cap leaves a working engine
        mark = rec.mark()
        client.send(P.Load(str(smollm2_path), ctx=512, ubatch=64, batch=64))
        ev = rec.wait_for(lambda e: isinstance(e, (P.ModelLoaded, P.Error)), 120, mark)
        assert isinstance(ev, P.Error) and ev.kind is P.ErrorKind.OUT_OF_MEMORY, ev
        size = os.path.getsize(smollm2_path) / 2**20
        assert ev.message.startswith(f"out of memory loading {os.path.basename(smollm2_path)} ({size:.0f} MiB): "
                                     f"the engine is capped at {cap / 2**20:.0f} MiB of address space"), ev.message
        assert "\n" not in ev.message
        assert client.wait_state(S.IDLE, 10) and client.alive
        load(client, rec, tiny, ctx=256)
    finally:
        client.stop()


@pytest.mark.slow
def test_cli_run_out_of_memory_is_one_line(smollm2_path):
    """`cellar run` under an address-space cap 32 MiB above what importing the runtime takes."""
    import resource
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", "import engine.runtime, engine.commands\n"
                        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmSize:')))"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    cap = int(r.stdout.strip()) * 1024 + 32 * 2**20

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))

    r = subprocess.run([sys.executable, "-m", "app.launcher", "run", str(smollm2_path), "-p", "hi", "-n", "2",
                        "--ctx", "512"], cwd=root, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(f"error: out of memory loading {os.path.basename(smollm2_path)} (94 MiB): "
                               f"the engine is capped at {cap / 2**20:.0f} MiB"), lines


def test_oom_kill_is_told_apart_from_another_kill(tiny, monkeypatch, tmp_path):
    """A SIGKILL while the worker's memory cgroup counted a new OOM kill is reported as out of memory,
    naming the model. The kernel's counter is stood in for by a file (a real OOM kill is not provoked
    on a shared machine); a plain SIGKILL with the counter unchanged stays a plain kill."""
    import engine.client as C
    counter = tmp_path / "memory.events"
    counter.write_text("oom 0\noom_kill 3\n")
    monkeypatch.setattr(C, "oom_kill_counter", lambda pid: counter)
    for oom in (True, False):
        client, rec = client_with()
        try:
            assert client.wait_state(S.IDLE, 60)
            load(client, rec, tiny, ctx=256)
            counter.write_text(f"oom 0\noom_kill {4 if oom else 3}\n")
            os.kill(client.pid, signal.SIGKILL)
            assert client.wait_state(S.CRASHED, 5)
            err = crash_error(rec)
            if oom:
                assert err.message.startswith("the engine ran out of memory and was killed by the system (SIGKILL) "
                                              f"with {tiny.name} ("), err.message
            else:
                assert err.message == "the engine was killed by SIGKILL (exit code -9); restart it to go on"
        finally:
            client.stop()
            counter.write_text("oom 0\noom_kill 3\n")
