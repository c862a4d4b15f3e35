"""Engine process targets that misbehave on purpose (spawned by tests/engine/test_engine_faults.py)."""
from __future__ import annotations

import ctypes
import time

from engine import protocol as P


def silent(conn) -> None:
    """Starts and never says Hello: a worker stuck before its handshake."""
    time.sleep(600)


def segfault_after_hello(conn) -> None:
    """Says Hello and idle, then dereferences NULL: a real SIGSEGV from inside the process."""
    conn.send(P.Hello(P.PROTOCOL_VERSION, 0))
    conn.send(P.StateChanged(P.EngineState.IDLE))
    time.sleep(0.3)
    ctypes.string_at(0)
