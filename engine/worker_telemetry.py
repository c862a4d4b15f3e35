"""The worker's telemetry thread: a `Telemetry` event about 4 times a second while busy, once a
second while idle. It reads only numbers the main thread hands it (KV cells, token times), never
the model itself, so it can run while a generation is in flight."""
from __future__ import annotations

import collections
import threading
import time

from engine import protocol as P
from engine.telemetry import VramProbe, process_rss, system_ram

BUSY = (P.EngineState.LOADING, P.EngineState.GENERATING, P.EngineState.BUSY)


class TelemetryLoop:
    def __init__(self, worker, busy_hz: float = 4.0, idle_hz: float = 1.0):
        self.worker = worker
        self.busy_hz, self.idle_hz = busy_hz, idle_hz
        self.kv: tuple[int, int] = (0, 0)
        self.last_tok_s = 0.0
        self._times: collections.deque[float] = collections.deque(maxlen=4096)
        self._generating = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._force = False
        self._vram = VramProbe()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engine-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._vram.close()

    def wake(self, force: bool = False) -> None:
        """Re-evaluate the rate now (state changed); `force` sends a sample at once."""
        self._force = self._force or force
        self._wake.set()

    def apply(self, req: P.ApplySettings) -> None:
        if req.telemetry_busy_hz:
            self.busy_hz = max(0.1, min(30.0, float(req.telemetry_busy_hz)))
        if req.telemetry_idle_hz:
            self.idle_hz = max(0.1, min(30.0, float(req.telemetry_idle_hz)))
        self.wake()

    # -- fed by the main thread
    def generation_started(self) -> None:
        self._times.clear()
        self._generating = True

    def note_token(self, kv: tuple[int, int]) -> None:
        self._times.append(time.perf_counter())
        self.kv = kv

    def generation_finished(self, tok_s: float) -> None:
        self._generating = False
        self.last_tok_s = tok_s

    def tok_s(self) -> float:
        if not self._generating:
            return self.last_tok_s
        now = time.perf_counter()
        times = [t for t in list(self._times) if now - t <= 1.0]
        if len(times) < 2:
            return 0.0
        span = max(now - times[0], times[-1] - times[0])
        return (len(times) - 1) / span if span > 0 else 0.0

    # -- the thread
    def sample(self) -> P.Telemetry:
        avail, total = system_ram()
        vram, note = self._vram.sample()
        used, cells = self.kv
        return P.Telemetry(t=time.time(), state=self.worker.state, rss_bytes=process_rss(), ram_available_bytes=avail,
                           ram_total_bytes=total, vram=vram, vram_note=note, kv_used=used, kv_total=cells,
                           tok_s=round(self.tok_s(), 2))

    def _run(self) -> None:
        next_at = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if self._force or now >= next_at:
                self._force = False
                self.worker.send(self.sample())
                hz = self.busy_hz if self.worker.state in BUSY else self.idle_hz
                next_at = now + 1.0 / hz
            self._wake.wait(timeout=max(0.0, next_at - time.monotonic()))
            if self._wake.is_set():
                self._wake.clear()
                hz = self.busy_hz if self.worker.state in BUSY else self.idle_hz
                next_at = min(next_at, time.monotonic() + 1.0 / hz)
