"""The only vocabulary shared by app/ and engine/: plain dataclasses for requests and events.

Importing this module imports neither torch nor Qt. (Requests and events are filled in by the
engine-process work; ErrorKind is used everywhere already.)
"""
from __future__ import annotations

import enum

PROTOCOL_VERSION = 1


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
