"""A CPU simulation of engine.offload.Backend: two in-order device streams whose progress is decided
by a policy, so a missing event shows up as wrong bytes instead of an intermittent GPU race.

- host operations (fill, host_wait) run at once, on the caller's thread;
- device operations (copy_async, record_event, wait_event, launch) are queued on their stream and run
  later; a copy reads the staging buffer when it RUNS, a launched compute reads its slot when it RUNS;
- policies: "eager-copy" runs the copy stream as early as it may and the compute stream only when
  forced (catches a slot overwritten before its reader ran); "eager-compute" the reverse (catches a
  compute that does not wait for its copy); "lazy" runs nothing until forced (catches a staging
  buffer refilled before its copy ran); "random" interleaves by a seeded generator.

Every operation is appended to `issued` when called and to `executed` when it runs.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from engine.offload import Backend


class SimDeadlock(RuntimeError):
    """The host waited for an event that no stream can ever reach."""


@dataclass(eq=False)
class SimEvent:
    id: int
    stream: str
    done: bool = False


@dataclass(eq=False)
class SimBuffer:
    kind: str          # "host" | "dev"
    id: int
    array: np.ndarray


class SimBackend(Backend):
    POLICIES = ("eager-copy", "eager-compute", "lazy", "random")

    def __init__(self, policy: str = "eager-copy", seed: int = 0):
        if policy not in self.POLICIES:
            raise ValueError(f"policy must be one of {self.POLICIES}")
        self.policy, self.rng = policy, random.Random(seed)
        self.queues: dict[str, deque] = {self.COPY: deque(), self.COMPUTE: deque()}
        self.issued: list[tuple] = []
        self.executed: list[tuple] = []
        self.buffers: list[SimBuffer] = []
        self.freed: list[SimBuffer] = []
        self._n_events = 0

    # -- allocation -------------------------------------------------------------------------------
    def alloc_staging(self, nbytes: int) -> SimBuffer:
        return self._alloc("host", nbytes)

    def alloc_device(self, nbytes: int) -> SimBuffer:
        return self._alloc("dev", nbytes)

    def _alloc(self, kind: str, nbytes: int) -> SimBuffer:
        buf = SimBuffer(kind, len(self.buffers), np.full(nbytes, 0xEE, np.uint8))   # poisoned
        self.buffers.append(buf)
        return buf

    def free_staging(self, host: SimBuffer) -> None:
        busy = [op for q in self.queues.values() for op in q if op[0] == "copy" and op[3] is host]
        if busy:
            raise AssertionError(f"staging buffer {host.id} freed while {len(busy)} copies from it are queued")
        self.freed.append(host)

    def view(self, buf: SimBuffer, offset: int, nbytes: int) -> np.ndarray:
        return buf.array[offset:offset + nbytes]

    # -- host side ---------------------------------------------------------------------------------
    def fill(self, host: SimBuffer, offset: int, src: np.ndarray) -> None:
        self._progress()
        host.array[offset:offset + src.nbytes] = np.asarray(src).view(np.uint8).reshape(-1)
        self.issued.append(("fill", host.id, offset, src.nbytes))

    def host_wait(self, event: SimEvent) -> None:
        self.issued.append(("host_wait", event.id))
        while not event.done:
            if not self._step(force=True):
                raise SimDeadlock(f"host waits for event {event.id} ({event.stream}) that nothing will record")

    def synchronize(self) -> None:
        while self._step(force=True):
            pass
        if any(self.queues.values()):
            raise SimDeadlock("streams cannot drain: a wait on an event that is never recorded")

    # -- device side (queued) ---------------------------------------------------------------------------
    def copy_async(self, dst: SimBuffer, dst_offset: int, host: SimBuffer, offset: int, nbytes: int) -> None:
        self._enqueue(self.COPY, ("copy", dst, dst_offset, host, offset, nbytes))

    def record_event(self, stream: str) -> SimEvent:
        self._n_events += 1
        ev = SimEvent(self._n_events, stream)
        self._enqueue(stream, ("record", ev))
        return ev

    def wait_event(self, stream: str, event: SimEvent | None) -> None:
        if event is not None:
            self._enqueue(stream, ("wait", event))

    def launch(self, fn: Callable[[], Any]) -> None:
        self._enqueue(self.COMPUTE, ("fn", fn))

    def _enqueue(self, stream: str, op: tuple) -> None:
        self._progress()
        self.queues[stream].append(op)
        self.issued.append((op[0], stream) + _describe(op))

    # -- running the streams ----------------------------------------------------------------------------
    def _runnable(self, stream: str) -> bool:
        q = self.queues[stream]
        return bool(q) and not (q[0][0] == "wait" and not q[0][1].done)

    def _run_head(self, stream: str) -> None:
        op = self.queues[stream].popleft()
        kind = op[0]
        if kind == "copy":
            _, dst, doff, host, hoff, n = op
            dst.array[doff:doff + n] = host.array[hoff:hoff + n]
        elif kind == "record":
            op[1].done = True
        elif kind == "fn":
            op[1]()
        self.executed.append((kind, stream) + _describe(op))

    def _step(self, force: bool) -> bool:
        """Run one device operation; False when none can run."""
        ready = [s for s in (self.COPY, self.COMPUTE) if self._runnable(s)]
        if not ready:
            return False
        if self.policy == "random":
            stream = self.rng.choice(ready)
        elif self.policy == "eager-compute":
            stream = self.COMPUTE if self.COMPUTE in ready else self.COPY
        else:
            stream = self.COPY if self.COPY in ready else self.COMPUTE
        self._run_head(stream)
        return True

    def _progress(self) -> None:
        """What the device does on its own between two host calls."""
        if self.policy in ("eager-copy", "eager-compute"):
            stream = self.COPY if self.policy == "eager-copy" else self.COMPUTE
            while self._runnable(stream):
                self._run_head(stream)
        elif self.policy == "random":
            for _ in range(self.rng.randrange(3)):
                if not self._step(force=False):
                    break


def _describe(op: tuple) -> tuple:
    kind = op[0]
    if kind == "copy":
        return (op[1].id, op[2], op[3].id, op[4], op[5])
    if kind in ("record", "wait"):
        return (op[1].id,)
    return ()
