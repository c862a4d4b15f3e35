"""EngineClient: runs the engine worker in its own process and talks to it with protocol messages.

No torch, no Qt: usable from a plain script, and from the GUI through app/engine_bridge.py.

    client = EngineClient()            # events go to client.events (a queue.Queue) ...
    client = EngineClient(on_event=f)  # ... or to f(event), called from the client's reader thread
    client.start(); client.send(Load(path)); client.send(Generate("r1", messages=[...]))

The client tracks the engine's state (starting, idle, loading, generating, busy, crashed, stopped).
A watcher thread waits on the process sentinel, so a worker that dies on its own (segfault, kill -9,
OOM kill) is reported within milliseconds as StateChanged(CRASHED) with the exit code and signal
name, plus an Error(ENGINE_CRASHED) and a GenerationDone("error") for each reply it was writing.
`restart()` starts a fresh worker, reloads the last model and restores the last saved session.

A heartbeat thread pings the worker every `ping_interval` seconds (its reader thread answers even
mid-reply). A worker that says nothing at all, no Pong, no telemetry, no token, for `hang_timeout`
seconds, or no Hello within `hello_timeout` of its start, is hung: it is killed and reported like a
crash, as "the engine stopped responding". With `memory_limit` the worker caps its own address space,
so a model that does not fit fails its load with an out-of-memory error naming the size and the cap.
With `auto_restart`, a request sent after a crash or hang starts a fresh worker (reloading the model)
instead of being refused.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import signal
import sys
import threading
import time
import types
import uuid
from multiprocessing.connection import wait as mp_wait
from typing import Callable

from engine import protocol as P
from engine.errors import CellarError
from engine.oom import cgroup_memory_cap, oom_kill_counter, read_oom_kills

S = P.EngineState


@contextlib.contextmanager
def _main_not_rerun():
    """Spawn re-imports the parent's __main__ in the child; a Qt app's main would drag Qt into the
    engine, and a plain script without a __main__ guard would start a second engine. Hide it while
    the process starts: the target is always an importable module-level function."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def describe_exit(code: int | None) -> tuple[str, str | None]:
    """("was killed by SIGKILL (exit code -9)", "SIGKILL") for a process's exit code."""
    if code is None:
        return "still running", None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (exit code {code})", name
    return f"exited with code {code}", None


class EngineClient:
    def __init__(self, on_event: Callable[[object], None] | None = None, *, name: str = "cellar-engine",
                 target: Callable | None = None, memory_limit: int | None = None, ping_interval: float = 2.0,
                 hang_timeout: float = 45.0, hello_timeout: float = 60.0, auto_restart: bool = False):
        self.on_event = on_event
        self.memory_limit = memory_limit        # RLIMIT_AS for the worker, bytes
        self.ping_interval, self.hang_timeout, self.hello_timeout = ping_interval, hang_timeout, hello_timeout
        self.auto_restart = auto_restart
        self._last_heard = 0.0                  # monotonic time of the worker's last event
        self._hello = False
        self._hung: str | None = None           # why the current worker was declared hung
        self._oom_file, self._oom_base = None, None   # the worker's cgroup OOM-kill counter at its start
        self.target = target                    # the process main; engine.worker.main by default
        self.events: queue.Queue = queue.Queue()
        self.name = name
        self._ctx = mp.get_context("spawn")
        self._lock = threading.RLock()
        self._state_cv = threading.Condition()
        self._state = S.STOPPED
        self._proc = None
        self._conn = None
        self._send_lock = threading.Lock()
        self._epoch = 0                         # bumps per process; stale threads stay quiet
        self._stopping = False
        self._in_flight: set[str] = set()
        self.last_exit: tuple[int | None, str | None] = (None, None)
        self.last_load: P.Load | None = None
        self.last_session: P.RestoreSession | None = None
        self.pid: int | None = None
        self._pump_thread: threading.Thread | None = None

    # ------------------------------------------------------------ state
    @property
    def state(self) -> S:
        return self._state

    def _set_state(self, state: S) -> None:
        with self._state_cv:
            self._state = state
            self._state_cv.notify_all()

    def wait_state(self, states, timeout: float = 10.0) -> bool:
        """Block until the state is one of `states`; False on timeout. (For scripts and tests.)"""
        wanted = {states} if isinstance(states, S) else set(states)
        deadline = time.monotonic() + timeout
        with self._state_cv:
            while self._state not in wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state_cv.wait(left)
            return True

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._lock:
            if self.alive:
                return
            if self.target is None:
                from engine.worker import main as target
            else:
                target = self.target
            parent, child = self._ctx.Pipe(duplex=True)
            self._epoch += 1
            self._stopping = False
            self._in_flight.clear()
            self._set_state(S.STARTING)
            self._deliver(P.StateChanged(S.STARTING))
            kwargs = {"memory_limit": self.memory_limit} if self.memory_limit else {}
            self._hello, self._hung, self._last_heard = False, None, time.monotonic()
            proc = self._ctx.Process(target=target, args=(child,), kwargs=kwargs, name=self.name, daemon=True)
            with _main_not_rerun():
                proc.start()
            child.close()
            self._proc, self._conn, self.pid = proc, parent, proc.pid
            self._oom_file = oom_kill_counter(proc.pid)
            self._oom_base = read_oom_kills(self._oom_file)
            epoch = self._epoch
            self._pump_thread = threading.Thread(target=self._pump, args=(epoch, parent), name="engine-events",
                                                 daemon=True)
            self._pump_thread.start()
            threading.Thread(target=self._watch, args=(epoch, proc), name="engine-watch", daemon=True).start()
            if self.ping_interval and self.ping_interval > 0:
                threading.Thread(target=self._heartbeat, args=(epoch, proc), name="engine-heartbeat",
                                 daemon=True).start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to shut down; terminate it if it does not within `timeout`."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            self._stopping = True
            try:
                self._raw_send(P.Shutdown())
            except (OSError, ValueError):
                pass
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
            self._finish(proc, crashed=False)

    def restart(self, reload: bool = True) -> None:
        """A fresh worker; with `reload`, the last model again and the last saved/restored session."""
        with self._lock:
            if self.alive:
                self.stop(timeout=2.0)
            self.start()
            load, session = self.last_load, self.last_session
            if reload and load is not None:
                self.send(load)
                if session is not None:
                    self.send(session)
                    self.last_session = session

    close = stop

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------ requests
    def send(self, request) -> None:
        """Send one request; raises CellarError(ENGINE_CRASHED) when no worker is running."""
        if not isinstance(request, P.REQUEST_TYPES):
            raise TypeError(f"not a protocol request: {type(request).__name__}")
        if not self.alive and self.auto_restart and self._state is S.CRASHED and not isinstance(request, P.Shutdown):
            self.restart(reload=not isinstance(request, (P.Load, P.Unload)))
        if not self.alive:
            raise CellarError(f"the engine is {self._state.value}; restart it first", P.ErrorKind.ENGINE_CRASHED)
        if isinstance(request, P.Load):
            self.last_load, self.last_session = request, None
        elif isinstance(request, P.Unload):
            self.last_load, self.last_session = None, None
        elif isinstance(request, P.Generate):
            self._in_flight.add(request.request_id)
        try:
            self._raw_send(request)
        except (OSError, ValueError) as e:
            raise CellarError(f"the engine did not take the request ({type(e).__name__}); restart it",
                              P.ErrorKind.ENGINE_CRASHED) from None

    def _raw_send(self, request) -> None:
        with self._send_lock:
            self._conn.send(request)

    def cancel(self, request_id: str | None = None) -> None:
        self.send(P.Cancel(request_id))

    def load(self, path, **options) -> None:
        """Load a model; `options` are the Load fields (ctx, batch, ubatch, threads, mmap, ...)."""
        self.send(P.Load(str(path), **options))

    def generate(self, **fields) -> str:
        """Start a reply (Generate fields; request_id made up when absent); returns its request id."""
        fields.setdefault("request_id", uuid.uuid4().hex[:12])
        self.send(P.Generate(**fields))
        return fields["request_id"]

    # ------------------------------------------------------------ threads
    def _deliver(self, event) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:                  # a broken callback must not kill the reader
                import traceback
                traceback.print_exc()
        else:
            self.events.put(event)

    def _track(self, event) -> None:
        if isinstance(event, P.Hello) and event.protocol_version != P.PROTOCOL_VERSION:
            self._deliver(P.Error(P.ErrorKind.INTERNAL, f"engine speaks protocol {event.protocol_version}, "
                                  f"this app {P.PROTOCOL_VERSION}; reinstall Cellar"))
        elif isinstance(event, P.StateChanged):
            self._set_state(event.state)
        elif isinstance(event, P.GenerationDone):
            self._in_flight.discard(event.request_id)
        elif isinstance(event, (P.SessionSaved, P.SessionRestored)):
            self.last_session = P.RestoreSession(event.path, event.conversation_id)

    def _pump(self, epoch: int, conn) -> None:
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError):
                return
            except Exception as e:             # a message cut short by a dying worker
                if epoch == self._epoch:
                    self._deliver(P.Error(P.ErrorKind.INTERNAL, f"unreadable event: {type(e).__name__}"))
                return
            if epoch != self._epoch:
                return
            self._last_heard = time.monotonic()
            if isinstance(event, P.Pong):
                continue                        # the heartbeat's answer: nothing for the app
            if isinstance(event, P.Hello):
                self._hello = True
            if isinstance(event, P.StateChanged) and event.state is S.STOPPED:
                continue                        # the client reports stopped once the process has ended
            self._track(event)
            self._deliver(event)

    def _heartbeat(self, epoch: int, proc) -> None:
        """Ping the worker; declare it hung when it says nothing for hang_timeout (or no Hello in time)."""
        seq = 0
        started = time.monotonic()
        while epoch == self._epoch and proc.is_alive():
            time.sleep(self.ping_interval)
            if epoch != self._epoch or not proc.is_alive():
                return
            now = time.monotonic()
            if not self._hello:
                if now - started > self.hello_timeout:
                    self._declare_hung(epoch, proc, f"did not start: no answer within {self.hello_timeout:g} s")
                    return
                continue
            if now - self._last_heard > self.hang_timeout:
                self._declare_hung(epoch, proc, f"stopped responding (no answer for {now - self._last_heard:.0f} s)")
                return
            seq += 1
            if not self._send_lock.acquire(timeout=0.2):
                continue                        # a send is stuck on a full pipe: the clock keeps running
            try:
                self._conn.send(P.Ping(seq))
            except (OSError, ValueError, AttributeError):
                return                          # the pipe is gone: the watcher reports the exit
            finally:
                self._send_lock.release()

    def _declare_hung(self, epoch: int, proc, why: str) -> None:
        with self._lock:
            if epoch != self._epoch or self._stopping:
                return
            self._hung = why
        try:
            proc.kill()                         # SIGKILL works on a stopped or deadlocked process too
        except (OSError, AttributeError):
            pass

    def _oom_killed(self) -> bool:
        """Did the kernel's OOM killer act in the worker's memory cgroup since it started?"""
        now = read_oom_kills(getattr(self, "_oom_file", None))
        return now is not None and self._oom_base is not None and now > self._oom_base

    def _model_words(self) -> str:
        if self.last_load is None:
            return ""
        import os
        try:
            size = f"{os.path.getsize(self.last_load.path) / 2**20:.0f} MiB"
        except OSError:
            size = "unknown size"
        cap = cgroup_memory_cap()
        limit = f"; memory is limited to {cap / 2**20:.0f} MiB" if cap else ""
        return f" with {os.path.basename(self.last_load.path)} ({size}) loaded{limit}"

    def _watch(self, epoch: int, proc) -> None:
        mp_wait([proc.sentinel])
        with self._lock:
            if epoch != self._epoch or self._stopping:
                return
            self._finish(proc, crashed=True)

    def _finish(self, proc, crashed: bool) -> None:
        """The process ended: close the pipe, report crashed or stopped. Holds self._lock."""
        proc.join(1)
        code = proc.exitcode
        detail, sig = describe_exit(code)
        if self._hung:
            detail = f"{self._hung} and was stopped"
        elif sig == "SIGKILL" and crashed and self._oom_killed():
            detail = "ran out of memory and was killed by the system (SIGKILL)" + self._model_words()
        self.last_exit = (code, sig)
        pump = self._pump_thread
        if pump is not None and pump is not threading.current_thread():
            pump.join(0.5)                      # hand over what the worker sent before it ended
        self._epoch += 1
        try:
            self._conn.close()
        except OSError:
            pass
        self._proc, self._conn = None, None
        if crashed:
            for rid in sorted(self._in_flight):
                self._deliver(P.Error(P.ErrorKind.ENGINE_CRASHED, f"the engine stopped while replying: it "
                                      f"{detail}; restart it to go on", rid))
                self._deliver(P.GenerationDone(rid, "error"))
            self._in_flight.clear()
            self._set_state(S.CRASHED)
            self._deliver(P.StateChanged(S.CRASHED, f"the engine {detail}", code, sig))
            self._deliver(P.Error(P.ErrorKind.ENGINE_CRASHED, f"the engine {detail}; restart it to go on"))
        else:
            self._set_state(S.STOPPED)
            self._deliver(P.StateChanged(S.STOPPED, f"the engine {detail}", code, sig))

