"""The CPU's features as the runtime and the memory planner both need them, without importing torch."""
from __future__ import annotations

import os


def cpu_flags() -> set[str]:
    """The flags /proc/cpuinfo lists for the first CPU (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def scratch_kind(flags: set[str] | None = None) -> str:
    """The prefill scratch's element type: "bf16" where the CPU multiplies bf16 natively (AMX, AVX-512
    BF16), else "f32"; CELLAR_SCRATCH=f32|bf16 chooses (f32 on a bf16 machine: slower prefill,
    activations not rounded to 8 bits of mantissa)."""
    mode = os.environ.get("CELLAR_SCRATCH", "").strip().lower()
    if mode in ("f32", "bf16"):
        return mode
    if mode:
        raise ValueError(f"CELLAR_SCRATCH={mode!r}: choose f32 or bf16")
    return "bf16" if {"amx_bf16", "avx512_bf16"} & (cpu_flags() if flags is None else flags) else "f32"
