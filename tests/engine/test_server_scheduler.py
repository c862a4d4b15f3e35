"""The scheduler on a tiny generated model: slot choice by longest cached prefix, prompt reuse, the
bounded queue, time limit, cancellation; and the batched step on a sliding-window cache."""
from __future__ import annotations

import queue
import threading
import time

import pytest
import torch

from engine.errors import BadRequest
from engine.runtime import LoadOptions, Model
from engine.sampling import SamplingParams
from engine.scheduler import Busy, Failed, Finished, Job, Piece, Scheduler
from tests.ggufgen import tiny_llama

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("sched") / "tiny.gguf", n_ctx=256)


def _model(path, n_seq: int, ctx: int = 256) -> Model:
    return Model.load(path, LoadOptions(ctx=ctx, threads=1, n_seq=n_seq))


class Collect:
    def __init__(self):
        self.q: queue.Queue = queue.Queue()

    def __call__(self, ev):
        self.q.put(ev)

    def result(self, timeout=60.0):
        while True:
            ev = self.q.get(timeout=timeout)
            if isinstance(ev, (Finished, Failed)):
                return ev


def _run(sched, prompt, n=8, **kw) -> Finished:
    c = Collect()
    sched.submit(Job(list(prompt), n, GREEDY, c, **kw))
    return c.result()


def test_prefix_reuse_and_slot_choice(model_path):
    m = _model(model_path, 2)
    s = Scheduler(m, n_slots=2, queue_max=4)
    try:
        a = _run(s, [1, 10, 11, 12, 13, 14])
        b = _run(s, [1, 30, 31, 32])                            # shares only BOS: the unused slot
        assert a.slot != b.slot
        prompt = [1, 10, 11, 12, 13, 14, 15, 16]                # extends a's prompt: a's slot
        cached = m.cached_tokens(a.slot)
        lcp = next((i for i, (x, y) in enumerate(zip(cached, prompt)) if x != y), min(len(cached), 8))
        again = _run(s, prompt)
        assert again.slot == a.slot and again.n_eval == 8 - min(lcp, 7) <= 3
        cold = _run(s, [1, 10, 11, 12, 13, 14, 15, 16], cache_prompt=False)
        assert cold.n_eval == 8 and cold.text == again.text
    finally:
        s.close()
        m.close()


def test_greedy_text_same_alone_and_together(model_path):
    m = _model(model_path, 3)
    s = Scheduler(m, n_slots=3, queue_max=4)
    prompts = [[1, 5, 6, 7], [1, 40, 41], [1, 20, 21, 22, 23, 24, 25]]
    try:
        alone = [_run(s, p, 12, cache_prompt=False, ignore_eos=True).text for p in prompts]
        cs = [Collect() for _ in prompts]
        for p, c in zip(prompts, cs):
            s.submit(Job(p, 12, GREEDY, c, cache_prompt=False, ignore_eos=True))
        together = [c.result() for c in cs]
        assert [r.text for r in together] == alone
        assert all(r.completion_tokens == 12 for r in together)
        assert s.n_decoded > s.n_steps                       # some steps carried several slots
    finally:
        s.close()
        m.close()


def test_queue_full_is_busy_and_cancel_frees(model_path):
    m = _model(model_path, 1)
    s = Scheduler(m, n_slots=1, queue_max=1)
    release = threading.Event()
    first = Collect()

    def hold(ev):                      # the first piece blocks the model's thread until released
        first(ev)
        if isinstance(ev, Piece):
            release.wait(30)

    try:
        a = s.submit(Job([1, 5, 6], 100, GREEDY, hold, ignore_eos=True))
        assert isinstance(first.q.get(timeout=30), Piece)   # a holds the slot
        waiting = Collect()
        b = s.submit(Job([1, 7], 4, GREEDY, waiting))        # queued
        with pytest.raises(Busy):
            s.submit(Job([1, 8], 4, GREEDY, Collect()))
        assert s.status()["queue"] == 1
        b.cancel()
        a.cancel()
        release.set()
        r = first.result()
        assert r.finish_reason == "cancelled" and r.completion_tokens < 100
        ok = _run(s, [1, 9], 3)
        assert ok.completion_tokens == 3 and s.status()["queue"] == 0
        assert waiting.q.empty()                            # a cancelled queued job never ran
    finally:
        release.set()
        s.close()
        m.close()


def test_time_limit_and_bad_jobs(model_path):
    m = _model(model_path, 1, ctx=64)
    s = Scheduler(m, n_slots=1, queue_max=1)
    try:
        r = _run(s, [1, 5], 60, ignore_eos=True, time_limit_s=0.0)      # expired before it got a slot
        assert isinstance(r, Failed) and isinstance(r.error, Busy)
        slow = Collect()

        def slow_emit(ev):             # a slow reader: each piece takes 50 ms of the model's thread
            slow(ev)
            if isinstance(ev, Piece):
                time.sleep(0.05)
        s.submit(Job([1, 5], 60, GREEDY, slow_emit, ignore_eos=True, time_limit_s=0.5))
        r = slow.result()
        assert r.finish_reason == "length" and r.completion_tokens < 60
        with pytest.raises(BadRequest, match="slot holds"):
            s.submit(Job([1] * 64, 4, GREEDY, Collect()))
        with pytest.raises(BadRequest, match="vocabulary"):
            s.submit(Job([1, 999], 4, GREEDY, Collect()))
        long = _run(s, [1, 5], 500, ignore_eos=True)        # capped by the slot's room
        assert long.finish_reason == "length" and long.completion_tokens == 62
    finally:
        s.close()
        m.close()


def test_sliding_window_sequences_do_not_depend_on_each_other(model_path):
    """A window of 4 on layer 0: sequences longer than the window, decoded together, compute bit for
    bit what each computes alone."""
    m = Model.load(model_path, LoadOptions(ctx=128, threads=1, n_seq=3, warmup=False))
    m.net.hp.swa_window, m.net.hp.swa_layers = 4, frozenset({0})
    m.kv = m.net.make_kv(128, m.n_ubatch, "f16", n_seq=3)
    assert [c.n_cells for c in m.kv.caches] == [128, 128]

    def run(prompts, n=10):
        logits = [[m.eval_batch([(s, p)])[0].clone()] for s, p in enumerate(prompts)]
        out = [[int(torch.argmax(lg[0]))] for lg in logits]
        for _ in range(n):
            rows = m.eval_batch([(s, [o[-1]]) for s, o in enumerate(out)])
            for s, o in enumerate(out):
                o.append(int(torch.argmax(rows[s])))
                logits[s].append(rows[s].clone())
        return out, logits

    prompts = [[1, 5, 9, 12, 3, 4, 7, 8], [1, 7], [1, 30, 31, 32, 33, 34]]
    together, lt = run(prompts)
    for s, p in enumerate(prompts):
        m.reset()
        alone, la = run([p])
        assert alone[0] == together[s]
        assert all(torch.equal(a, b) for a, b in zip(la[0], lt[s]))
    m.close()
