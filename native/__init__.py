"""Cellar's native kernels: C sources in src/, built by build.py into libcellar_kernels.so.

engine/kernels.py loads the library through ctypes; when it is absent everything runs through torch.
"""
from __future__ import annotations

from pathlib import Path

LIB_NAME = "libcellar_kernels.so"


def library_path() -> Path:
    """Where the built library lives (it may not exist)."""
    return Path(__file__).resolve().parent / LIB_NAME
