"""The engine process: one model, one generation at a time, requests and events over a Pipe.

`main(conn)` is the process target (multiprocessing, spawn). A reader thread takes requests off the
pipe as they come, so a Cancel is seen between tokens and between prefill ubatches while the main
thread is busy in `Model.generate`. Every error is caught, classified and sent as an `Error` event;
the worker stays usable afterwards. Every `Generate` ends in exactly one `GenerationDone`.

Importing this module imports no torch: the runtime is imported on the first Load.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import queue
import threading
import time

from engine import protocol as P
from engine.errors import BadRequest, CellarError, Cancelled
from engine.kv_cell_map import add_cell_runs
from engine.log import setup_logging
from engine.worker_telemetry import TelemetryLoop

log = logging.getLogger("cellar.worker")

S = P.EngineState


def classify(exc: BaseException, doing: str) -> tuple[P.ErrorKind, str]:
    """(kind, one-line message) for anything raised while `doing` something."""
    if isinstance(exc, CellarError):
        return exc.kind, exc.message.splitlines()[0] if exc.message else exc.kind.value
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return (P.ErrorKind.OUT_OF_MEMORY,
                f"ran out of memory while {doing}; try a smaller context, --no-mmap off, or fewer GPU layers")
    text = str(exc).strip().splitlines()
    return P.ErrorKind.INTERNAL, f"{type(exc).__name__} while {doing}: {text[0] if text else 'no message'}"


class Worker:
    def __init__(self, conn):
        self.conn = conn
        self._send_lock = threading.Lock()
        self.inbox: queue.Queue = queue.Queue()
        self.model = None
        self.state = S.IDLE
        self.cancel = threading.Event()
        self._lock = threading.Lock()           # guards current/pending/cancelled request ids
        self._current: str | None = None
        self._pending: set[str] = set()
        self._cancelled: set[str] = set()
        self._snapshot_wanted = threading.Event()
        self.conversation: str | None = None    # the conversation whose tokens sit in seq 0
        self.messages: list[dict] = []          # and its messages, reply included
        self.history: list[int] = []            # and its tokens, prompt and reply
        self.left_out = 0                       # its oldest messages kept out of the prompt (prompting.fit_chat)
        self.raw = False
        self.sampler = None
        self.restored_sampler_state = None
        self._last_progress = (0.0, 0.0, "")
        self.telemetry = TelemetryLoop(self)

    # ------------------------------------------------------------ plumbing
    def send(self, event) -> None:
        with self._send_lock:
            try:
                self.conn.send(event)
            except (BrokenPipeError, EOFError, OSError):
                os._exit(0)                     # the client is gone; nothing left to serve

    def set_state(self, state: S, detail: str = "") -> None:
        self.state = state
        self.send(P.StateChanged(state, detail))
        self.telemetry.wake()

    def _reader(self) -> None:
        while True:
            try:
                req = self.conn.recv()
            except (EOFError, OSError):         # the client is gone
                req = P.Shutdown()
            except Exception as e:              # e.g. a message from a newer protocol
                self.send(P.Error(P.ErrorKind.BAD_INPUT, f"unreadable request: {type(e).__name__}"))
                continue
            if not isinstance(req, P.REQUEST_TYPES):
                self.send(P.Error(P.ErrorKind.BAD_INPUT, f"not a request: {type(req).__name__}"))
                continue
            if isinstance(req, P.Ping):
                self.send(P.Pong(req.seq))      # answered here, so a busy main thread still answers
                continue
            if isinstance(req, P.Cancel):
                self._on_cancel(req.request_id)
                continue
            if isinstance(req, P.Snapshot):
                self._snapshot_wanted.set()
                self.telemetry.wake(force=True)
                if self.state is S.IDLE:
                    self.inbox.put(req)
                continue
            if isinstance(req, P.ApplySettings):
                self.telemetry.apply(req)
            if isinstance(req, P.Generate):
                with self._lock:
                    self._pending.add(req.request_id)
            if isinstance(req, P.Shutdown):
                self.cancel.set()
            self.inbox.put(req)
            if isinstance(req, P.Shutdown):
                return

    def _on_cancel(self, rid: str | None) -> None:
        with self._lock:
            if rid is None:
                self._cancelled |= self._pending
                self.cancel.set()
            else:
                if rid in self._pending:
                    self._cancelled.add(rid)
                if rid == self._current:
                    self.cancel.set()

    # ------------------------------------------------------------ loop
    def run(self) -> None:
        self.send(P.Hello(P.PROTOCOL_VERSION, os.getpid()))
        self.set_state(S.IDLE)
        threading.Thread(target=self._reader, name="engine-reader", daemon=True).start()
        self.telemetry.start()
        handlers = {P.Load: self.do_load, P.Unload: self.do_unload, P.Generate: self.do_generate,
                    P.SaveSession: self.do_save, P.RestoreSession: self.do_restore,
                    P.ApplySettings: self.do_settings, P.Snapshot: self.do_snapshot}
        while True:
            req = self.inbox.get()
            if isinstance(req, P.Shutdown):
                break
            handler = handlers.get(type(req))
            if handler is None:
                self.send(P.Error(P.ErrorKind.BAD_INPUT, f"unknown request {type(req).__name__}"))
                continue
            handler(req)
        self.telemetry.stop()
        if self.model is not None:
            self._close_model()
        self.send(P.StateChanged(S.STOPPED, "shut down"))

    def _fail(self, exc: BaseException, doing: str, request_id: str | None = None) -> P.ErrorKind:
        kind, message = classify(exc, doing)
        log.log(logging.ERROR if kind is P.ErrorKind.INTERNAL else logging.INFO, "%s", message,
                exc_info=exc if kind is P.ErrorKind.INTERNAL else None)
        self.send(P.Error(kind, message, request_id))
        return kind

    # ------------------------------------------------------------ requests
    def do_load(self, req: P.Load) -> None:
        from engine import worker_model
        self.cancel.clear()
        self.set_state(S.LOADING, os.path.basename(req.path))
        try:
            worker_model.check_file(req.path)
            if self.model is not None:
                self._close_model()
            self.model = worker_model.load(req, self._progress)
            self.send(worker_model.loaded_event(self.model, req))
            plan = worker_model.memory_plan(self.model)
            if plan is not None:
                self.send(P.MemoryPlanEvent(plan))
            self._send_kv()
        except Exception as e:                  # every failure becomes an Error event
            from engine.oom import is_out_of_memory, loading_error
            if is_out_of_memory(e):
                self._close_half_loaded()
                e = loading_error(e, req.path)
            self._fail(e, f"loading {os.path.basename(req.path)}")
        finally:
            self.cancel.clear()
            self.set_state(S.IDLE)

    def _close_half_loaded(self) -> None:
        """After a load ran out of memory: drop what it held so the worker can answer again."""
        import gc
        if self.model is not None:
            self._close_model()
        gc.collect()

    def _progress(self, fraction: float, message: str = "") -> None:
        """Load progress, at most every 1 % or 50 ms (a runtime may call this per tensor)."""
        if self.cancel.is_set():
            raise Cancelled("loading was cancelled")
        now, (last_f, last_t, last_m) = time.monotonic(), self._last_progress
        fraction, message = float(fraction), str(message)
        if fraction in (0.0, 1.0) or message != last_m or fraction - last_f >= 0.01 or now - last_t >= 0.05:
            self._last_progress = (fraction, now, message)
            self.send(P.LoadProgress(fraction, message))

    def _close_model(self) -> None:
        try:
            self.model.close()
        except Exception:                       # closing must never take the worker down
            log.exception("closing the model failed")
        self.model, self.conversation, self.messages, self.sampler = None, None, [], None
        self.history = []
        self.telemetry.kv = (0, 0)

    def do_unload(self, req: P.Unload) -> None:
        if self.model is not None:
            self.set_state(S.BUSY, "unloading")
            self._close_model()
        self.set_state(S.IDLE)

    def do_generate(self, req: P.Generate) -> None:
        from engine import worker_model
        rid = req.request_id
        with self._lock:
            self._pending.discard(rid)
            if rid in self._cancelled:
                self._cancelled.discard(rid)
                self.send(P.GenerationDone(rid, "cancelled"))
                return
            self._current = rid
            self.cancel.clear()
        self.set_state(S.GENERATING, rid)
        try:
            if self.model is None:
                raise BadRequest("no model is loaded; load a .gguf model first")
            done = worker_model.generate(self, req)
            self.send(done)
        except Exception as e:
            self._fail(e, "generating", rid)
            if self.model is not None and not isinstance(e, CellarError):
                self._reset_cache()
            self.send(P.GenerationDone(rid, "error"))
        finally:
            with self._lock:
                self._current = None
                self.cancel.clear()
            self._send_kv()
            self.set_state(S.IDLE)

    def _reset_cache(self) -> None:
        try:
            self.model.reset()
        except Exception:
            log.exception("resetting the KV cache failed")
        self.conversation, self.messages, self.history = None, [], []

    def do_save(self, req: P.SaveSession) -> None:
        from engine import worker_model
        self._busy(lambda: self.send(worker_model.save_session(self, req)), "saving the session", req.request_id)

    def do_restore(self, req: P.RestoreSession) -> None:
        from engine import worker_model
        self._busy(lambda: self.send(worker_model.restore_session(self, req.path, req.conversation_id,
                                                                  req.request_id)),
                   "restoring the session", req.request_id)
        self._send_kv()

    def _busy(self, fn, doing: str, request_id: str | None) -> None:
        self.set_state(S.BUSY, doing)
        try:
            if self.model is None:
                raise BadRequest("no model is loaded; load a .gguf model first")
            fn()
        except Exception as e:
            self._fail(e, doing, request_id)
        finally:
            self.set_state(S.IDLE)

    def do_settings(self, req: P.ApplySettings) -> None:
        if req.threads is not None:
            try:
                from engine import worker_model
                worker_model.set_threads(req.threads, self.model)
            except Exception as e:
                self._fail(e, "changing the thread count")

    def do_snapshot(self, req: P.Snapshot) -> None:
        self._send_kv()

    def _send_kv(self) -> None:
        self._snapshot_wanted.clear()
        if self.model is None:
            return
        try:
            snap = add_cell_runs(self.model.kv_snapshot(), self.model.kv)
        except Exception as e:
            self._fail(e, "reading the KV cache")
            return
        self.telemetry.kv = kv_cells(snap, self.model)
        self.send(P.KVSnapshot(snap))

    def on_token_hook(self) -> None:
        """Called between tokens: honour a Snapshot asked for mid-generation."""
        if self._snapshot_wanted.is_set():
            self._send_kv()


def kv_cells(snap: dict, model) -> tuple[int, int]:
    """(used, total) cells from a kv_snapshot, tolerant of its exact shape."""
    used, total = snap.get("used"), snap.get("total")
    if isinstance(used, int) and isinstance(total, int):
        return used, total
    caches = snap.get("caches") or []
    if caches and isinstance(caches, list):
        first = max(caches, key=lambda c: c.get("total", 0) if isinstance(c, dict) else 0)
        if isinstance(first, dict):
            return int(first.get("used", 0)), int(first.get("total", 0))
    return len(model.cached_tokens(0)), int(getattr(model, "n_ctx", 0))


def limit_memory(nbytes: int) -> None:
    """Cap this process's address space (RLIMIT_AS): allocations past it fail, and are reported as
    out of memory, instead of the system's OOM killer taking the process."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        nbytes = min(nbytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, hard))


def main(conn, memory_limit: int | None = None) -> None:
    """Process target. memory_limit: bytes of address space the engine may use (None: no cap)."""
    if memory_limit:
        limit_memory(memory_limit)
    faulthandler.enable()                       # a segfault leaves a Python traceback on stderr
    setup_logging()
    log.info("engine process %d started", os.getpid())
    try:
        Worker(conn).run()
    finally:
        try:
            conn.close()
        except OSError:
            pass
