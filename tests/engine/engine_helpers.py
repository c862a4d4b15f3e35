"""Helpers for tests that drive the engine process: record events, wait for one."""
from __future__ import annotations

import threading
import time

from engine import protocol as P
from engine.client import EngineClient


class Recorder:
    """An on_event callback that keeps every event and lets a test wait for one."""

    def __init__(self):
        self.events: list = []
        self._cv = threading.Condition()
        self.times: list[float] = []

    def __call__(self, event) -> None:
        with self._cv:
            self.events.append(event)
            self.times.append(time.perf_counter())
            self._cv.notify_all()

    def mark(self) -> int:
        with self._cv:
            return len(self.events)

    def wait_for(self, pred, timeout: float = 30.0, since: int = 0):
        """The first event from index `since` on that satisfies `pred`; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for ev in self.events[since:]:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [type(e).__name__ for e in self.events[since:]][-20:]
                    raise AssertionError(f"no matching event within {timeout} s; last: {kinds}")
                self._cv.wait(left)

    def of(self, cls, since: int = 0) -> list:
        with self._cv:
            return [e for e in self.events[since:] if isinstance(e, cls)]

    def done(self, rid: str, timeout: float = 60.0, since: int = 0) -> P.GenerationDone:
        return self.wait_for(lambda e: isinstance(e, P.GenerationDone) and e.request_id == rid, timeout, since)


def started_client() -> tuple[EngineClient, Recorder]:
    rec = Recorder()
    client = EngineClient(on_event=rec)
    client.start()
    assert client.wait_state(P.EngineState.IDLE, 60), client.state
    return client, rec


def load(client: EngineClient, rec: Recorder, path, **opts) -> P.ModelLoaded:
    mark = rec.mark()
    client.send(P.Load(str(path), **{"ctx": 512, "ubatch": 64, "batch": 64, **opts}))
    ev = rec.wait_for(lambda e: isinstance(e, (P.ModelLoaded, P.Error)), 120, mark)
    assert isinstance(ev, P.ModelLoaded), ev
    assert client.wait_state(P.EngineState.IDLE, 10)
    return ev
