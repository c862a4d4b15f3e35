"""The CPU's features as the runtime and the memory planner both need them, without importing torch."""
from __future__ import annotations

import functools
import os


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags /proc/cpuinfo lists for the first CPU (empty where it cannot be read); read once (the
    memory planner asks on every plan, and the recommendation plans many)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def scratch_kind(flags: frozenset[str] | set[str] | None = None) -> str:
    """The prefill scratch's element type: "bf16" where the CPU multiplies bf16 natively (AMX, AVX-512
    BF16), else "f32"; CELLAR_SCRATCH=f32|bf16 chooses (f32 on a bf16 machine: slower prefill,
    activations not rounded to 8 bits of mantissa)."""
    mode = os.environ.get("CELLAR_SCRATCH", "").strip().lower()
    if mode in ("f32", "bf16"):
        return mode
    if mode:
        raise ValueError(f"CELLAR_SCRATCH={mode!r}: choose f32 or bf16")
    return "bf16" if {"amx_bf16", "avx512_bf16"} & (cpu_flags() if flags is None else flags) else "f32"
