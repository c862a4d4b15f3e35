"""Continuous batching over one model: N slots (sequence ids) sharing one KV cache.

    sched = Scheduler(model, n_slots=4, queue_max=16)
    job = sched.submit(Job(prompt_ids, max_tokens=64, params=SamplingParams(...), stop=("\\n",),
                           emit=callback))            # callback(Piece | Finished | Failed), from the thread
    job.cancel()                                      # client gone: the slot frees at the next step
    sched.status()                                    # slots (idle|busy), queue length: GET /health
    sched.close()

One thread runs the model. Each turn of its loop it drops cancelled and timed-out work, evaluates one
prompt chunk (at most a ubatch) of one slot that is reading its prompt, then decodes one token for
every generating slot in ONE batched forward step (Model.eval_batch). A request joins between steps.
Prompt chunks run as single-sequence steps; every step attends each sequence over its own cells only
(Model.eval_batch), so what a slot computes does not depend on the other slots: its greedy text is
the text it gets alone, bit for bit.

Each slot owns n_ctx / N cells of the cache. A finished request leaves its tokens in its slot as a
prompt cache; a new request goes to the idle slot sharing the longest prefix with its prompt when
that prefix covers at least half of it (else the least recently used idle slot), and evaluates only
the rest, as llama-server does. The queue of requests
waiting for a slot is bounded: submit raises Busy when it is full.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from engine.errors import BadRequest, CellarError
from engine.protocol import ErrorKind
from engine.runtime import ContextFull, Model, _TextOut
from engine.sampling import Sampler, SamplingParams

log = logging.getLogger("cellar.scheduler")

SIMILARITY = 0.5        # a cached prefix must cover this share of a prompt to pick its slot


class Busy(CellarError):
    """Every slot is busy and the queue is full (HTTP 503)."""
    kind = ErrorKind.BAD_INPUT


@dataclass
class Piece:
    text: str                       # new text (whole UTF-8 characters; held back near a stop string)


@dataclass
class Finished:
    text: str
    finish_reason: str              # "stop" (end of turn or stop string) | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    n_eval: int                     # prompt tokens actually evaluated (the rest came from the slot's cache)
    slot: int


@dataclass
class Failed:
    error: CellarError


Event = Piece | Finished | Failed


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    emit: Callable[[Event], None]
    stop: Sequence[str] = ()
    time_limit_s: float = 600.0     # from submission; generation stops with "length" when it runs out
    cache_prompt: bool = True       # False: the slot's cached tokens are dropped first
    ignore_eos: bool = False        # end-of-generation tokens are never sampled (benchmarks)
    cancelled: threading.Event = field(default_factory=threading.Event)
    t_submit: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def deadline(self) -> float:
        return self.t_submit + self.time_limit_s


class _Slot:
    def __init__(self, sid: int):
        self.id = sid
        self.job: Job | None = None
        self.t_used = 0.0
        self.todo: list[int] = []        # prompt tokens still to evaluate
        self.n_eval = 0
        self.pending: int | None = None  # sampled token that the next decode step evaluates
        self.history: list[int] = []
        self.tokens: list[int] = []
        self.sampler: Sampler | None = None
        self.out: _TextOut | None = None

    @property
    def state(self) -> str:
        return "idle" if self.job is None else "busy"


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Scheduler:
    def __init__(self, model: Model, n_slots: int = 4, queue_max: int = 16):
        if not 1 <= n_slots <= model.opts.n_seq:
            raise BadRequest(f"{n_slots} slots need a model loaded for {n_slots} sequences "
                             f"(LoadOptions.n_seq is {model.opts.n_seq})")
        if queue_max < 0:
            raise BadRequest(f"the queue length must be 0 or more (got {queue_max})")
        self.model = model
        self.slots = [_Slot(i) for i in range(n_slots)]
        self.slot_ctx = model.n_ctx // n_slots
        self.queue_max = queue_max
        self._eog = sorted(model.tokenizer.eog_ids)
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self.n_steps = 0                   # batched decode steps run, and the tokens they decoded:
        self.n_decoded = 0                 # n_decoded / n_steps is the mean batch (GET /health)
        self._thread = threading.Thread(target=self._loop, name="cellar-scheduler", daemon=True)
        self._thread.start()

    # ---- the caller's side (any thread) ------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Queue a job; raises BadRequest when it cannot fit a slot, Busy when the queue is full."""
        if not job.prompt:
            raise BadRequest("the prompt is empty; give at least one token")
        if len(job.prompt) >= self.slot_ctx:
            raise BadRequest(f"the prompt has {len(job.prompt)} tokens and a slot holds {self.slot_ctx} "
                             "(context / parallel); shorten the prompt, or restart with a larger --ctx or "
                             "a smaller --parallel")
        self.model._check_tokens(job.prompt)
        if job.max_tokens < 1:
            raise BadRequest(f"max_tokens must be 1 or more (got {job.max_tokens})")
        job.max_tokens = min(job.max_tokens, self.slot_ctx - len(job.prompt))
        with self._cv:
            if self._closing:
                raise Busy("the server is shutting down; try again later")
            idle = sum(1 for s in self.slots if s.job is None)
            if len(self._queue) >= idle + self.queue_max:
                raise Busy(f"all {len(self.slots)} slots are busy and {len(self._queue)} requests are waiting; "
                           "try again later")
            self._queue.append(job)
            self._cv.notify()
        return job

    def status(self) -> dict:
        with self._cv:
            slots = [{"id": s.id, "state": s.state, "n_ctx": self.slot_ctx,
                      "n_cached": len(self.model.cached_tokens(s.id)),
                      "n_generated": len(s.tokens) if s.job else 0} for s in self.slots]
            return {"slots": slots, "queue": len(self._queue), "queue_max": self.queue_max,
                    "decode_steps": self.n_steps, "decoded_tokens": self.n_decoded}

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closing = True
            for j in self._queue:
                j.cancel()
            for s in self.slots:
                if s.job:
                    s.job.cancel()
            self._cv.notify()
        self._thread.join(timeout)

    # ---- the model's thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closing and not self._queue and all(s.job is None for s in self.slots):
                    self._cv.wait()
                if self._closing and all(s.job is None for s in self.slots):
                    for j in self._queue:
                        self._emit(j, Failed(Busy("the server is shutting down")))
                    self._queue.clear()
                    return
                self._admit()
            try:
                self._turn()
            except Exception as e:               # a bug must not take the server down: fail what ran
                log.exception("scheduler step failed")
                for s in self.slots:
                    if s.job is not None:
                        self._fail(s, CellarError(f"internal error while generating: {type(e).__name__}: {e}"))

    def _admit(self) -> None:
        """Under the lock: drop cancelled or expired queued jobs; give waiting jobs to idle slots."""
        now = time.monotonic()
        for j in list(self._queue):
            if j.cancelled.is_set():
                self._queue.remove(j)
            elif now > j.deadline:
                self._queue.remove(j)
                self._emit(j, Failed(Busy("the request waited its whole time limit for a slot; try again later")))
        while self._queue:
            idle = [s for s in self.slots if s.job is None]
            if not idle:
                break
            job = self._queue.popleft()
            self._start(max(idle, key=lambda s: self._fit(s, job)), job)

    def _fit(self, s: _Slot, job: Job) -> tuple[int, float]:
        """How well slot s suits job: the cached prefix it shares, counted when it covers at least
        half the prompt (llama-server's similarity rule), else the least recently used slot."""
        n = _common_prefix(self.model.cached_tokens(s.id), job.prompt) if job.cache_prompt else 0
        return (n if n >= SIMILARITY * len(job.prompt) else -1, -s.t_used)

    def _start(self, s: _Slot, job: Job) -> None:
        m = self.model
        if job.cache_prompt:
            n = m._reusable_prefix(job.prompt, s.id)
            m._truncate(s.id, n)
        else:
            m.reset(s.id)
            n = 0
        s.job, s.t_used = job, time.monotonic()
        s.todo, s.n_eval = list(job.prompt[n:]), len(job.prompt) - n
        s.pending, s.history, s.tokens = None, list(job.prompt), []
        s.sampler = Sampler(job.params)
        s.out = _TextOut(m.tokenizer.stream_decoder(), job.stop,
                         lambda t, piece, j=job: piece and self._emit(j, Piece(piece)))

    def _turn(self) -> None:
        now = time.monotonic()
        for s in self.slots:
            if s.job is None:
                continue
            if s.job.cancelled.is_set():
                self._finish(s, "cancelled")
            elif now > s.job.deadline:
                self._finish(s, "length")
        reading = [s for s in self.slots if s.job is not None and s.todo]
        if reading:
            self._prefill_chunk(min(reading, key=lambda s: s.job.t_submit))
        gen = [s for s in self.slots if s.job is not None and s.pending is not None]
        if gen:
            self._decode(gen)

    def _prefill_chunk(self, s: _Slot) -> None:
        m = self.model
        chunk, s.todo = s.todo[:m.n_ubatch], s.todo[m.n_ubatch:]
        try:
            logits = m.eval_batch([(s.id, chunk)])
        except ContextFull:                        # no room: drop idle slots' caches and try once more
            if not self._evict_idle():
                self._fail(s, BadRequest("the KV cache is full; restart the server with a larger --ctx"))
                return
            logits = m.eval_batch([(s.id, chunk)])
        if not s.todo:
            self._accept(s, logits[0])

    def _decode(self, gen: list[_Slot]) -> None:
        m = self.model
        batch = [(s.id, [s.pending]) for s in gen]
        try:
            rows = m.eval_batch(batch)
        except ContextFull:
            if not self._evict_idle():
                for s in gen:
                    self._fail(s, BadRequest("the KV cache is full; restart the server with a larger --ctx"))
                return
            rows = m.eval_batch(batch)
        self.n_steps += 1
        self.n_decoded += len(gen)
        for i, s in enumerate(gen):
            s.pending = None
            self._accept(s, rows[i])

    def _accept(self, s: _Slot, logits) -> None:
        """Sample the slot's next token from logits; finish, or leave it pending for the next step."""
        job = s.job
        if job.ignore_eos:
            logits = logits.clone()
            logits[self._eog] = float("-inf")
        t = s.sampler.sample(logits, s.history)
        if self.model.tokenizer.is_eog(t):
            self._finish(s, "stop")
            return
        s.tokens.append(t)
        s.history.append(t)
        if s.out.push(t):
            self._finish(s, "stop", stopped=True)
        elif len(s.tokens) >= job.max_tokens or len(s.history) >= self.slot_ctx:
            self._finish(s, "length")
        else:
            s.pending = t

    def _finish(self, s: _Slot, reason: str, stopped: bool = False) -> None:
        job = s.job
        text = s.out.finish(stopped)
        self._emit(job, Finished(text, reason, len(job.prompt), len(s.tokens), s.n_eval, s.id))
        self._release(s)

    def _fail(self, s: _Slot, err: CellarError) -> None:
        self._emit(s.job, Failed(err))
        self.model.reset(s.id)                     # its cells may be half written
        self._release(s)

    def _release(self, s: _Slot) -> None:
        s.job, s.todo, s.pending, s.sampler, s.out = None, [], None, None, None
        s.t_used = time.monotonic()

    def _evict_idle(self) -> bool:
        idle = [s for s in self.slots if s.job is None and self.model.cached_tokens(s.id)]
        for s in idle:
            self.model.reset(s.id)
        return bool(idle)

    @staticmethod
    def _emit(job: Job, ev: Event) -> None:
        try:
            job.emit(ev)
        except Exception:                          # the receiver is gone (event loop closed): drop it
            log.debug("event for a finished request dropped", exc_info=True)
