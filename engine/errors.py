"""Typed errors raised inside the engine. Each carries an ErrorKind (engine/protocol.py) so the CLI
can print one line and pick an exit status, and the worker can send it across the queue."""
from __future__ import annotations

from engine.protocol import ErrorKind


class CellarError(Exception):
    """An error with a kind and a one-line message saying what is wrong and what to do."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, kind: ErrorKind | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.kind.value


class BadModelFile(CellarError):
    """The file is not a GGUF model or is malformed (bad magic, truncated, lying header)."""
    kind = ErrorKind.BAD_MODEL_FILE


class UnsupportedModel(CellarError):
    """A well-formed GGUF that uses an architecture or tensor type Cellar does not run."""
    kind = ErrorKind.UNSUPPORTED


class TemplateError(CellarError):
    """A chat template failed to render or tried to escape the sandbox."""
    kind = ErrorKind.TEMPLATE


class BadSessionFile(CellarError):
    """A session file that is truncated, tampered with, or from another model."""
    kind = ErrorKind.BAD_SESSION


class OutOfMemory(CellarError):
    """The plan does not fit, or an allocation failed."""
    kind = ErrorKind.OUT_OF_MEMORY


class BadRequest(CellarError):
    """Bad arguments: a flag out of range, an unknown model name, an empty prompt where one is needed."""
    kind = ErrorKind.BAD_INPUT


class Cancelled(CellarError):
    kind = ErrorKind.CANCELLED


def exit_status(kind: ErrorKind) -> int:
    """CLI exit status: 2 for bad input of any sort, 1 for anything else."""
    return 2 if kind in (ErrorKind.BAD_MODEL_FILE, ErrorKind.UNSUPPORTED, ErrorKind.TEMPLATE,
                         ErrorKind.BAD_SESSION, ErrorKind.BAD_INPUT) else 1
