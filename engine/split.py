"""Share a list of independent tasks (torch matmuls on row chunks) between the calling thread and
helper threads, with torch itself single-threaded.

    split.run([lambda: part(0, 256), lambda: part(256, 512), ...])

Why not torch's own threads: an OpenMP team is fork-join, so on a busy machine every parallel op
waits until the OS schedules all of its threads, a time slice or more. Here the caller takes tasks
from a shared counter and so can finish the whole list alone; a helper joins a run only while tasks
remain, and the caller waits only for helpers that joined (as native/src/pool.c does for the C
kernels). torch releases the GIL inside its ops and ctypes inside the native calls, so the tasks run
in parallel. The number of threads follows kernels.get_threads().
"""
from __future__ import annotations

import itertools
import threading
from typing import Callable, Sequence

import torch

from engine import kernels

Task = Callable[[], None]


class _Run:
    def __init__(self, tasks: Sequence[Task], max_helpers: int):
        self.tasks = tasks
        self.max_helpers = max_helpers       # helpers left over from a higher thread count stay out
        self.next = itertools.count()        # next() on it is atomic under the GIL
        self.lock = threading.Lock()
        self.closed = False
        self.joined = 0
        self.left = threading.Condition(self.lock)
        self.error: BaseException | None = None
        self.inference = torch.is_inference_mode_enabled()   # thread-local in torch: carried over

    def work(self) -> None:
        n = len(self.tasks)
        while (i := next(self.next)) < n:
            try:
                self.tasks[i]()
            except BaseException as e:       # re-raised on the caller
                self.error = self.error or e

    def join(self) -> bool:
        with self.lock:
            if self.closed or self.joined >= self.max_helpers:
                return False
            self.joined += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.joined -= 1
            if self.joined == 0:
                self.left.notify_all()

    def close_and_wait(self) -> None:
        with self.lock:
            self.closed = True
            while self.joined:
                self.left.wait()


class _Helpers:
    def __init__(self):
        self.cond = threading.Condition()
        self.run: _Run | None = None
        self.generation = 0
        self.threads: list[threading.Thread] = []

    def ensure(self, n: int) -> None:
        while len(self.threads) < n:
            t = threading.Thread(target=self._loop, name=f"cellar-split-{len(self.threads) + 1}", daemon=True)
            self.threads.append(t)
            t.start()

    def post(self, run: _Run) -> None:
        with self.cond:
            self.run = run
            self.generation += 1
            self.cond.notify(run.max_helpers)     # not all: helpers beyond the thread count stay asleep

    def _loop(self) -> None:
        # torch's thread count is per thread: a new thread's matmuls would use every core's OpenMP
        # team, so a chunk's numbers would depend on which thread took it (runs not repeatable)
        torch.set_num_threads(1)
        seen = 0
        while True:
            with self.cond:
                while self.generation == seen:
                    self.cond.wait()
                seen, run = self.generation, self.run
            if run is not None and run.join():
                try:
                    with torch.inference_mode(run.inference):
                        run.work()
                finally:
                    run.leave()


_helpers = _Helpers()
_busy = threading.Lock()


def run(tasks: Sequence[Task]) -> None:
    """Run every task once, on this thread and up to kernels.get_threads() - 1 helpers; returns when
    all are done. A second caller while a run is in progress runs its tasks alone."""
    n_help = min(kernels.get_threads(), len(tasks)) - 1
    if n_help < 1 or not _busy.acquire(blocking=False):
        for t in tasks:
            t()
        return
    try:
        _helpers.ensure(n_help)
        r = _Run(tasks, n_help)
        _helpers.post(r)
        r.work()
        r.close_and_wait()
        if r.error is not None:
            raise r.error
    finally:
        _busy.release()
