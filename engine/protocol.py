"""The only vocabulary shared by app/ and engine/: plain dataclasses for requests and events.

Importing this module imports neither torch nor Qt. Every message is a plain dataclass of plain
values (str, int, float, bool, None, list, dict), so it pickles across the process boundary and
can be turned into a dict with `to_dict` for logs or tests.

Requests go app -> engine, events come engine -> app. The worker's first event is `Hello`, which
carries PROTOCOL_VERSION; the client refuses a worker that speaks another version.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

PROTOCOL_VERSION = 2                            # 2: Ping/Pong heartbeat


class ErrorKind(str, enum.Enum):
    BAD_MODEL_FILE = "bad_model_file"
    UNSUPPORTED = "unsupported"
    OUT_OF_MEMORY = "out_of_memory"
    TEMPLATE = "template"
    BAD_SESSION = "bad_session"
    BAD_INPUT = "bad_input"
    CANCELLED = "cancelled"
    ENGINE_CRASHED = "engine_crashed"
    INTERNAL = "internal"


class EngineState(str, enum.Enum):
    """What the engine is doing. The worker reports idle/loading/generating/busy; the client adds
    starting (process spawned, no Hello yet), crashed (process died on its own) and stopped."""
    STARTING = "starting"
    IDLE = "idle"
    LOADING = "loading"
    GENERATING = "generating"
    BUSY = "busy"            # unload, save or restore a session
    CRASHED = "crashed"
    STOPPED = "stopped"


# ---------------------------------------------------------------- requests (app -> engine)

@dataclass
class Load:
    path: str
    ctx: int = 4096
    batch: int = 512
    ubatch: int = 512
    threads: int | None = None
    mmap: bool = True
    mlock: bool = False
    gpu_layers: int = 0
    kv_type: str = "f16"


@dataclass
class Unload:
    pass


@dataclass
class Generate:
    """One reply. Give `messages` (chat, rendered with the model's template) or `prompt` (raw
    completion). Tokens the conversation already has in the KV cache are not evaluated again."""
    request_id: str
    messages: list[dict] | None = None          # [{"role": "user", "content": "..."}, ...]
    prompt: str | None = None                   # raw completion text, used when messages is None
    conversation_id: str = "default"
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    session_path: str | None = None             # restore this session first (e.g. after a restart)


@dataclass
class Cancel:
    request_id: str | None = None               # None: whatever is running


@dataclass
class SaveSession:
    path: str
    conversation_id: str = "default"
    request_id: str | None = None


@dataclass
class RestoreSession:
    path: str
    conversation_id: str = "default"
    request_id: str | None = None


@dataclass
class ApplySettings:
    """Settings that take effect without a reload; None leaves a setting as it is."""
    threads: int | None = None
    telemetry_busy_hz: float | None = None
    telemetry_idle_hz: float | None = None


@dataclass
class Snapshot:
    """Ask for a KVSnapshot and a Telemetry event now."""
    pass


@dataclass
class Shutdown:
    pass


@dataclass
class Ping:
    """Heartbeat: the worker's reader thread answers Pong at once, even mid-reply. The client sends one
    every few seconds and reports the engine as hung when nothing comes back for a while."""
    seq: int = 0


Request = (Load | Unload | Generate | Cancel | SaveSession | RestoreSession | ApplySettings | Snapshot | Shutdown
           | Ping)
REQUEST_TYPES = (Load, Unload, Generate, Cancel, SaveSession, RestoreSession, ApplySettings, Snapshot,
                 Shutdown, Ping)


# ---------------------------------------------------------------- events (engine -> app)

@dataclass
class Hello:
    protocol_version: int
    pid: int


@dataclass
class StateChanged:
    state: EngineState
    detail: str = ""                            # e.g. "killed by SIGKILL (exit code -9)"
    exit_code: int | None = None                # set when the process ended
    signal_name: str | None = None              # e.g. "SIGKILL", "SIGSEGV"


@dataclass
class LoadProgress:
    fraction: float                             # 0.0 .. 1.0
    message: str = ""


@dataclass
class ModelLoaded:
    path: str
    arch: str
    n_ctx: int
    n_vocab: int
    load_s: float
    options: dict[str, Any] = field(default_factory=dict)   # the Load fields as used
    warning: str = ""                                       # e.g. mlock refused


@dataclass
class MemoryPlanEvent:
    plan: dict[str, Any]                        # {"ram": {"weights": bytes, ...}, "vram": {...}, ...}


@dataclass
class Token:
    request_id: str
    token_id: int
    text: str                                   # whole UTF-8 characters only; may be ""


@dataclass
class GenerationDone:
    request_id: str
    stop_reason: str                            # "length" | "eos" | "stop" | "cancelled" | "error"
    text: str = ""
    n_tokens: int = 0                           # generated
    prompt_tokens: int = 0
    n_eval: int = 0                             # tokens actually evaluated, prompt and reply (as the CLI's)
    prompt_eval: int = 0                        # prompt tokens evaluated: cache reuse shows here
    ttft_s: float = 0.0
    tok_s: float = 0.0                          # generation speed
    prompt_tok_s: float = 0.0
    t_prompt_s: float = 0.0
    t_gen_s: float = 0.0
    left_out: int = 0                           # oldest messages kept out of the prompt to fit the context


@dataclass
class SessionSaved:
    path: str
    conversation_id: str
    n_tokens: int
    request_id: str | None = None


@dataclass
class SessionRestored:
    path: str
    conversation_id: str
    n_tokens: int
    messages: list[dict] = field(default_factory=list)
    request_id: str | None = None


@dataclass
class Telemetry:
    t: float                                    # time.time() of the sample
    state: EngineState
    rss_bytes: int                              # engine process and its children
    ram_available_bytes: int
    ram_total_bytes: int
    vram: list[dict] | None = None              # [{"index", "name", "used", "total"}] or None
    vram_note: str = ""                         # "no NVIDIA GPU" when vram is None
    kv_used: int = 0
    kv_total: int = 0
    tok_s: float = 0.0                          # over the last second while generating, else last reply


@dataclass
class KVSnapshot:
    snapshot: dict[str, Any]                    # runtime.Model.kv_snapshot(): cells per cache, per sequence;
                                                # each cache also has "cells": [[seq_mask, in_window, count],
                                                # ...] over the cell index (engine/kv_cell_map.py)


@dataclass
class Pong:
    seq: int = 0


@dataclass
class Error:
    kind: ErrorKind
    message: str                                # one line: what is wrong and what to do
    request_id: str | None = None


Event = (Hello | StateChanged | LoadProgress | ModelLoaded | MemoryPlanEvent | Token | GenerationDone
         | SessionSaved | SessionRestored | Telemetry | KVSnapshot | Error | Pong)
EVENT_TYPES = (Hello, StateChanged, LoadProgress, ModelLoaded, MemoryPlanEvent, Token, GenerationDone,
               SessionSaved, SessionRestored, Telemetry, KVSnapshot, Error, Pong)


def to_dict(msg) -> dict[str, Any]:
    """A message as a plain dict with its type name under "type" (for logs and JSON)."""
    d = asdict(msg)
    for k, v in d.items():
        if isinstance(v, enum.Enum):
            d[k] = v.value
    return {"type": type(msg).__name__, **d}
