"""Looking at a model file before anything loads: is it GGUF at all, what is in it, what would it cost.
Reads the header, metadata and tensor table only (engine.gguf with read_data=False): no torch, no
tensor bytes. Call these off the GUI thread (app.background.run_in_thread)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CellarError
from engine.gguf import GGUF_MAGIC, GGUFFile, describe_non_gguf


def not_gguf_reason(path: str | Path) -> str | None:
    """One friendly line when path is plainly not a GGUF model (read from its first bytes), else None."""
    p = Path(path)
    if p.is_dir():
        return f"“{p.name}” is a folder; drop the .gguf file inside it"
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"“{p.name}” cannot be read ({e.strerror or e})"
    if head[:4] == GGUF_MAGIC:
        return None
    what = describe_non_gguf(head)
    what = what if what.startswith("starts") else "it is " + what
    if what.startswith("starts"):
        what = "it " + what
    return f"This file is not a GGUF model ({what})"


@dataclass
class ModelPreview:
    path: Path
    gguf: Any                      # GGUFFile opened with read_data=False (kept for re-planning)
    summary: dict

    def close(self) -> None:
        self.gguf.close()


def open_preview(path: str | Path) -> ModelPreview:
    """Raises CellarError (BadModelFile, UnsupportedModel) with a one-line message for a bad file."""
    from engine.model_info import model_summary
    reason = not_gguf_reason(path)
    if reason:
        raise CellarError(reason)
    g = GGUFFile.open(path, read_data=False)
    try:
        return ModelPreview(Path(path), g, model_summary(g))
    except BaseException:
        g.close()
        raise


def plan_json(preview: ModelPreview, **settings) -> dict:
    """engine.memory.plan(...).to_json() for the given Settings fields."""
    from engine.memory import Settings, plan
    return plan(preview.gguf, Settings(**settings)).to_json()


def error_line(exc: BaseException) -> str:
    if isinstance(exc, CellarError):
        return exc.message.splitlines()[0]
    return f"Could not read the file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
