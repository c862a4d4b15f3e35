"""engine.pages: a load's zero-fills on a second thread."""
import threading

import pytest
import torch

from engine.pages import PageWork, zeros


def test_zero_fills_garbage_and_waits():
    pages = PageWork()
    ts = [pages.empty(1000, 7, dtype=dt) for dt in (torch.float16, torch.bfloat16, torch.float32)]
    for t in ts:
        t.view(torch.uint8).fill_(0xAB)        # what a reused allocation may hold
    pages.zero(ts)
    pages.wait()
    assert all(int(torch.count_nonzero(t)) == 0 for t in ts)


def test_jobs_run_in_order_on_another_thread_and_errors_reach_wait():
    pages, seen = PageWork(), []
    pages.submit(lambda: seen.append(threading.current_thread() is threading.main_thread()))

    def bad():
        raise MemoryError("no room")
    pages.submit(bad)
    pages.submit(lambda: seen.append("after the error"))
    with pytest.raises(MemoryError, match="no room"):
        pages.wait()
    assert seen == [False]          # off the main thread; nothing after the failed job
    pages.wait()                    # the error was handed over once


def test_quiet_wait_keeps_the_callers_error():
    pages = PageWork()
    pages.submit(lambda: 1 / 0)
    pages.wait(quiet=True)


def test_zeros_without_a_load_is_torch_zeros():
    t = zeros(None, 5, dtype=torch.float16)
    assert t.dtype == torch.float16 and not t.any()


def test_inference_tensors_are_filled():
    with torch.inference_mode():
        pages = PageWork()
        t = pages.empty(64, dtype=torch.float32)
    pages.wait()
    assert not t.any()


def test_runs_inline_when_no_thread_can_start(monkeypatch):
    def refuse(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, "start", refuse)
    pages = PageWork()
    t = pages.empty(100, dtype=torch.float32)
    t.fill_(3.0)
    pages.zero([t])
    assert not t.any()              # done at once, on the caller's thread
    with pytest.raises(ZeroDivisionError):
        pages.submit(lambda: 1 / 0)
    pages.wait()
