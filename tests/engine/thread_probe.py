"""Counts a model's threads while it generates (run as a subprocess by tests/engine/test_threads.py, so
nothing else in the process owns threads).

    python -m tests.engine.thread_probe MODEL T [T2 ...]

Loads MODEL with threads=T, generates, and prints one JSON line per thread count: the process's
threads before loading, after loading, at most while generating, and how many threads used CPU
while generating (utime+stime grew by at least 2 ticks). Further counts are applied with
worker_model.set_threads (the app's live thread setting) and generated with again.
"""
from __future__ import annotations

import json
import os
import sys


def tasks() -> list[str]:
    return os.listdir("/proc/self/task")


def cpu_ticks() -> dict[str, int]:
    out = {}
    for t in tasks():
        try:
            with open(f"/proc/self/task/{t}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[t] = int(fields[11]) + int(fields[12])          # utime + stime (fields 14 and 15)
        except OSError:
            pass
    return out


class RunnableSampler:
    """Samples how many of the process's threads are runnable (state R: on a CPU or waiting for one),
    itself excluded, every millisecond: the concurrency the engine asks for, even beyond the cores."""

    def __init__(self):
        import threading
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import time
        me = str(threading_native_id())
        while not self._stop.is_set():
            n = 0
            for t in tasks():
                if t == me:
                    continue
                try:
                    with open(f"/proc/self/task/{t}/stat") as f:
                        n += f.read().rsplit(")", 1)[1].split()[0] == "R"
                except OSError:
                    pass
            self.samples.append(n)
            time.sleep(0.001)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def quantile(self, q: float) -> int:
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(q * len(s)))] if s else 0


def threading_native_id() -> int:
    import threading
    return threading.get_native_id()


def main(path: str, counts: list[int]) -> None:
    before = len(tasks())
    from engine import worker_model
    from engine.runtime import LoadOptions, Model
    from engine.sampling import Sampler, SamplingParams
    m = Model.load(path, LoadOptions(ctx=512, ubatch=64, batch=64, threads=counts[0], warmup=True))
    loaded = len(tasks())
    prompt = m.tokenizer.encode("Once upon a time, in a land far away, " * 8, add_special=True)
    for i, t in enumerate(counts):
        if i:
            worker_model.set_threads(t, m)
        m.reset()
        seen: list[int] = []
        ticks0 = cpu_ticks()
        with RunnableSampler() as rs:
            m.generate(prompt, 24, Sampler(SamplingParams(temperature=0.0)),
                       on_token=lambda _i, _p: seen.append(len(tasks())))
        ticks1 = cpu_ticks()
        used = {k: v - ticks0.get(k, 0) for k, v in ticks1.items()}
        busy = sum(1 for v in used.values() if v >= 2)
        main_share = used.get(str(threading_native_id()), 0) / max(1, sum(used.values()))
        print(json.dumps({"threads": t, "before": before, "loaded": loaded, "generating_max": max(seen),
                          "busy": busy, "main_share": round(main_share, 3), "runnable_max": max(rs.samples), "runnable_p99": rs.quantile(0.99),
                          "samples": len(rs.samples)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(x) for x in sys.argv[2:]])
