"""engine.pages: a load's zero-fills on a second thread."""
import threading
import time

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


def test_jobs_run_on_another_thread_and_errors_reach_wait():
    pages, seen, go = PageWork(), [], threading.Event()
    pages.submit(lambda: seen.append(threading.current_thread() is threading.main_thread()))

    def bad():
        go.wait(5)
        raise MemoryError("no room")
    pages.submit(bad)
    go.set()
    for _ in range(500):            # until the thread has met the error
        if pages._error is not None:
            break
        time.sleep(0.01)
    pages.submit(lambda: seen.append("after the error"))
    with pytest.raises(MemoryError, match="no room"):
        pages.wait()
    assert seen == [False]          # off the main thread; nothing begun after the failed job
    pages.wait()                    # the error was handed over once


def test_wait_shares_the_queued_fills_and_the_chunks_cover_everything(monkeypatch):
    monkeypatch.setattr(PageWork, "CHUNK", 4096)
    pages = PageWork()
    ts = [torch.full((3000 + i, 3), 7.0, dtype=dt) for i, dt in enumerate((torch.float16, torch.float32))]
    ts.append(torch.full((5,), 7.0))
    ran_here = []
    real = PageWork._do

    def spy(self, job):
        ran_here.append(threading.current_thread() is threading.main_thread())
        real(self, job)
    monkeypatch.setattr(PageWork, "_do", spy)
    pages.zero(ts)
    pages.wait()
    assert all(int(torch.count_nonzero(t)) == 0 for t in ts)
    assert len(ran_here) > 10       # chunks of 4096 bytes


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


def test_a_load_returns_with_every_buffer_written_even_over_garbage(tmp_path, monkeypatch):
    """Model.load's buffers come from torch.empty and are filled on the page thread: when load returns,
    the KV cache and the ubatch buffers hold zeros, whatever the allocator handed out (here: 0xFF bytes,
    NaN as f16/f32), and the thread is gone."""
    from engine.runtime import LoadOptions, Model
    from tests.ggufgen import tiny_llama
    real_empty = torch.empty

    def dirty_empty(*size, **kw):
        t = real_empty(*size, **kw)
        t.view(-1).view(torch.uint8).fill_(0xFF)
        return t
    monkeypatch.setattr(torch, "empty", dirty_empty)
    path = tiny_llama(tmp_path / "tiny.gguf")
    m = Model.load(path, LoadOptions(ctx=256, threads=2, warmup=False))
    monkeypatch.setattr(torch, "empty", real_empty)
    try:
        kv = [t for c in m.kv.caches for d in (c.k, c.v) for t in d.values()]
        assert kv and all(int(torch.count_nonzero(t)) == 0 for t in kv)
        if m.scratch.ubatch is not None:
            assert all(int(torch.count_nonzero(t)) == 0 for t in m.scratch.ubatch.t.values())
        assert not any(t.name == "cellar-load-pages" for t in threading.enumerate())
    finally:
        m.close()
