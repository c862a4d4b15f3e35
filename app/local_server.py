"""The local server as a child process: `cellar serve` for the loaded model, started and stopped from
the window. Its contract (engine/server.py): one JSON line {"event": "listening", "url": ...} on
stdout once it accepts requests; GET /health answers {"status": "ok", "slots": [{"state"}], "queue"};
SIGTERM stops it. Errors before it listens are one line on stderr starting "error:".

QProcess reports output and exit on the GUI thread; /health is polled with urllib on a short-lived
thread once a second, so nothing here blocks the window.
"""
from __future__ import annotations

import json
import signal
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from app import paths
from app.background import run_in_thread

LOOPBACK, ALL_INTERFACES = "127.0.0.1", "0.0.0.0"
STOP_GRACE_MS = 5000
HEALTH_EVERY_MS = 1000


@dataclass
class ServeOptions:
    model: str                      # path of the .gguf
    port: int = 8080
    parallel: int = 2
    network: bool = False           # listen on every interface (needs an API key)
    api_key: str = ""
    ctx: int = 4096
    kv_type: str = "f16"

    def problem(self) -> str | None:
        """Why these options cannot start a server (one line), or None."""
        if self.network and len(self.api_key.strip()) < 8:
            return "Network access needs an API key of at least 8 characters, so only people you give it to can " \
                   "use the model"
        if not 0 <= self.port <= 65535:
            return f"Port {self.port} is out of range; use 1024 to 65535 (0: any free port)"
        if self.ctx < self.parallel * 16:
            return f"A context of {self.ctx} leaves under 16 tokens for each of {self.parallel} parallel requests"
        return None


def cellar_command() -> list[str]:
    """How to run `cellar` from here: the frozen bundle's own program, or this Python on the launcher."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "app.launcher"]


def serve_args(o: ServeOptions) -> list[str]:
    args = ["serve", o.model, "--host", ALL_INTERFACES if o.network else LOOPBACK, "--port", str(o.port),
            "--parallel", str(o.parallel), "--ctx", str(o.ctx), "--kv-type", o.kv_type]
    if o.api_key.strip():
        args += ["--api-key", o.api_key.strip()]
    return args


def in_flight(health: dict) -> tuple[int, int]:
    """(requests being answered, requests waiting) from a /health answer."""
    busy = sum(1 for s in health.get("slots") or [] if isinstance(s, dict) and s.get("state") not in (None, "idle"))
    return busy, int(health.get("queue") or 0)


def pid_file() -> Path:
    """Where the running server's pid is kept, so a window that died cannot leave it running for good."""
    return paths.data_dir() / "local_server.pid"


def stop_leftover() -> int | None:
    """Stop a `cellar serve` an earlier window started and never stopped (it crashed or was killed);
    its pid, or None when there was none. Only a process whose command line is that server's is touched."""
    f = pid_file()
    try:
        pid = int(json.loads(f.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        f.unlink(missing_ok=True)
    import psutil
    try:
        proc = psutil.Process(pid)
        cmd = proc.cmdline()
        if "serve" not in cmd:
            return None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except psutil.TimeoutExpired:
            proc.kill()
        return pid
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _get_health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=3) as r:
        return json.loads(r.read().decode("utf-8"))


class LocalServer(QObject):
    """States: off, starting, running, stopping, failed (with a one-line reason)."""
    stateChanged = Signal(str, str)          # state, detail (the URL when running, the reason when failed)
    health = Signal(object)                  # the latest /health answer (dict)

    command = staticmethod(cellar_command)   # tests point this at a stand-in

    def __init__(self, parent=None):
        super().__init__(parent)
        self.state, self.detail = "off", ""
        self.url: str | None = None
        self.options: ServeOptions | None = None
        self.last_health: dict | None = None
        self.proc: QProcess | None = None
        self._stderr: list[str] = []
        self._out = b""
        self._polling = False
        self._timer = QTimer(self, interval=HEALTH_EVERY_MS, timeout=self._poll)
        self._kill_timer = QTimer(self, singleShot=True, interval=STOP_GRACE_MS, timeout=self._kill)

    @property
    def listen_url(self) -> str | None:
        """The address to give clients: on all interfaces, this machine's name stands in for 0.0.0.0."""
        if self.url and self.options and self.options.network:
            import socket
            return self.url.replace(ALL_INTERFACES, socket.gethostname())
        return self.url

    def _set(self, state: str, detail: str = "") -> None:
        self.state, self.detail = state, detail
        self.stateChanged.emit(state, detail)

    # ---------------------------------------------------------------- start and stop
    def start(self, options: ServeOptions) -> bool:
        if self.state in ("starting", "running", "stopping"):
            return False
        if (why := options.problem()) is not None:
            self._set("failed", why)
            return False
        self.options, self.url, self.last_health = options, None, None
        self._stderr, self._out = [], b""
        p = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        p.setProcessEnvironment(env)
        p.readyReadStandardOutput.connect(self._read_out)
        p.readyReadStandardError.connect(self._read_err)
        p.finished.connect(self._finished)
        p.errorOccurred.connect(self._error)
        cmd = [*self.command(), *serve_args(options)]
        self.proc = p
        self._set("starting", "loading the model in the server process")
        p.started.connect(lambda: pid_file().write_text(json.dumps({"pid": p.processId(), "port": options.port})))
        p.start(cmd[0], cmd[1:])
        return True

    def stop(self) -> None:
        if self.proc is None or self.state in ("off", "failed", "stopping"):
            return
        self._timer.stop()
        self._set("stopping")
        self.proc.terminate()
        self._kill_timer.start()

    def stop_blocking(self, timeout_ms: int = 3000) -> None:
        """For closing the window: ask, wait a moment, then make sure."""
        p = self.proc
        if p is None or p.state() == QProcess.ProcessState.NotRunning:
            return
        self._timer.stop()
        p.terminate()
        if not p.waitForFinished(timeout_ms):
            p.kill()
            p.waitForFinished(1000)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.state() != QProcess.ProcessState.NotRunning:
            self.proc.kill()

    # ---------------------------------------------------------------- what the process says
    def _read_out(self) -> None:
        self._out += bytes(self.proc.readAllStandardOutput())
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line.decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("event") == "listening" and self.state == "starting":
                self.url = str(msg.get("url", ""))
                self._set("running", self.url)
                self._timer.start()
                self._poll()

    def _read_err(self) -> None:
        text = bytes(self.proc.readAllStandardError()).decode("utf-8", "replace")
        self._stderr = (self._stderr + [ln for ln in text.splitlines() if ln.strip()])[-20:]

    def _reason(self, code: int) -> str:
        errors = [ln for ln in self._stderr if ln.startswith("error:")]
        if errors:
            line = errors[-1].removeprefix("error:").strip()
            return line[:1].upper() + line[1:]
        return f"The server stopped (exit status {code})" + (f": {self._stderr[-1]}" if self._stderr else "")

    def _finished(self, code: int, _status) -> None:
        pid_file().unlink(missing_ok=True)
        self._timer.stop()
        self._kill_timer.stop()
        self.url = None
        if self.state == "stopping":
            self._set("off")
        else:
            self._set("failed", self._reason(code))

    def _error(self, err) -> None:
        if err == QProcess.ProcessError.FailedToStart:
            self._set("failed", f"`cellar serve` could not be started ({self.proc.errorString()})")

    # ---------------------------------------------------------------- health
    def _poll(self) -> None:
        if self._polling or self.state != "running" or not self.url:
            return
        self._polling = True
        url = self.url.replace(ALL_INTERFACES, LOOPBACK)

        def got(h):
            self._polling = False
            if self.state == "running" and isinstance(h, dict):
                self.last_health = h
                self.health.emit(h)

        def failed(_e):
            self._polling = False
        run_in_thread(lambda: _get_health(url), got, failed)
