"""A load's zero-fills on a second thread: the KV cache, the scratch and the ubatch activations are made
with torch.empty and written with zeros by a helper thread, in jobs of one GIL-free call each
(torch._foreach_zero_), while the main thread builds the tokenizer. At the end of a load everything is
as it was when the main thread did it all: every buffer written, so the first reply faults nothing in.

    pages = PageWork()
    kv = pages.empty(n_cells, width, dtype=torch.float16)     # or torch.empty(...) and pages.zero([...])
    ...                                 # the main thread's own work
    pages.wait()                        # done (what is left runs here too), or a job's error raised here
"""
from __future__ import annotations

import functools
import queue
import threading
from typing import Callable, Sequence

import torch

_STOP = object()


class PageWork:
    """Jobs for a daemon thread, started by the first submit; wait() runs what the thread has not taken
    yet on the caller's thread, so the two share the rest once the caller's own work is done."""

    CHUNK = 4 << 20          # bytes zeroed per job: small enough for the two threads to share the fill

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._inline = False

    def submit(self, job: Callable[[], None]) -> None:
        """Run job on the thread; inline where no thread can start (e.g. its stack does not fit under an
        address-space cap: the job's own errors then raise here, as without a PageWork)."""
        if self._thread is None and not self._inline:
            t = threading.Thread(target=self._run, name="cellar-load-pages", daemon=True)
            try:
                t.start()
                self._thread = t
            except RuntimeError:                 # "can't start new thread"
                self._inline = True
        if self._inline:
            job()
        else:
            self._jobs.put(job)

    def zero(self, tensors: Sequence[torch.Tensor]) -> None:
        """Zero-fill contiguous tensors made with torch.empty: one GIL-free call per CHUNK bytes."""
        group: list[torch.Tensor] = []
        size = 0
        for t in tensors:
            flat = t.view(-1)
            step = max(1, self.CHUNK // t.element_size())
            for a in range(0, flat.numel(), step):
                part = flat[a:a + step]
                group.append(part)
                size += part.numel() * t.element_size()
                if size >= self.CHUNK:
                    self.submit(functools.partial(_zero, group))
                    group, size = [], 0
        if group:
            self.submit(functools.partial(_zero, group))

    def empty(self, *size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """torch.zeros(*size, dtype), zero-filled on the thread."""
        t = torch.empty(*size, dtype=dtype)
        self.zero([t])
        return t

    def wait(self, quiet: bool = False) -> None:
        """Every job done (those still queued run here, beside the thread); the first error a job raised
        is raised here, unless quiet (the caller is raising its own); after an error the jobs not yet
        begun are skipped."""
        if self._thread is not None:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                self._do(job)
            self._jobs.put(_STOP)
            self._thread.join()
            self._thread = None
        err, self._error = self._error, None
        if err is not None and not quiet:
            raise err

    def _do(self, job: Callable[[], None]) -> None:
        if self._error is None:
            try:
                job()
            except BaseException as e:      # noqa: BLE001 (handed to wait())
                if self._error is None:
                    self._error = e

    def _run(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            self._do(job)


def _zero(tensors: list[torch.Tensor]) -> None:
    # in-place writes to tensors made under inference mode must happen under it (a per-thread state)
    with torch.inference_mode():
        torch._foreach_zero_(tensors)


def zeros(pages: PageWork | None, *size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.zeros, or a tensor the page thread zero-fills when a load has one."""
    return torch.zeros(*size, dtype=dtype) if pages is None else pages.empty(*size, dtype=dtype)
