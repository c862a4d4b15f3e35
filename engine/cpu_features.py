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


# ggml types the int8 prefill GEMM takes (native/src/qgemm.c): Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K with
# VNNI; the AVX2 kernel (vpmaddubsw) all but Q8_0, whose bytes would saturate its int16 pair sums
INT8_PREFILL_TYPES = frozenset({2, 3, 6, 7, 8, 12, 13, 14})
INT8_AVX2_TYPES = INT8_PREFILL_TYPES - {8}
INT8_PANEL_ROWS = 32          # its weights' rows come in panels of 32


def prefill_mode() -> str:
    """CELLAR_PREFILL: auto (default), f32 (dequantize + matmul), i8 (the int8 GEMM where it takes the
    weight), gemm / q8 (the GEMV-exact GEMM, engine/ops.py)."""
    mode = os.environ.get("CELLAR_PREFILL", "").strip().lower() or "auto"
    if mode not in ("auto", "f32", "i8", "gemm", "q8"):
        raise ValueError(f"CELLAR_PREFILL={mode!r}: choose auto, f32, i8, gemm or q8")
    return mode


def built_isas() -> frozenset[str]:
    """The instruction sets the native library was built with (native/build.py's manifest beside it:
    "scalar", "avx2", "avx512", "avx512vnni"); empty without the library or with CELLAR_NO_NATIVE set."""
    if os.environ.get("CELLAR_NO_NATIVE", "") not in ("", "0"):
        return frozenset()
    return _manifest_isas()


@functools.cache
def _manifest_isas() -> frozenset[str]:
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "native"
    if not (root / "libcellar_kernels.so").exists():
        return frozenset()
    try:
        return frozenset(json.loads((root / "libcellar_kernels.json").read_text())["isas"])
    except (OSError, ValueError, KeyError, TypeError):
        return frozenset({"scalar", "avx2", "avx512", "avx512vnni"})   # an older build: assume all


def int8_kernel(flags: frozenset[str] | set[str] | None = None, built: frozenset[str] | set[str] | None = None) -> str | None:
    """Which int8 GEMM the native library runs here: "vnni" (AVX-512 VNNI), "avx2", or None (no library,
    no AVX2, or CELLAR_ISA=scalar); CELLAR_ISA caps it as it caps the library's path (engine/kernels.py),
    and `built` (default: the library's manifest, built_isas) is what the library has."""
    flags = cpu_flags() if flags is None else flags
    built = built_isas() if built is None else built
    isa = os.environ.get("CELLAR_ISA", "").strip().lower()
    if (isa in ("", "avx512-vnni") and {"avx512_vnni", "avx512f", "avx512bw", "avx512vl"} <= flags
            and "avx512vnni" in built):
        return "vnni"
    if isa != "scalar" and {"avx2", "fma", "f16c"} <= flags and {"avx2", "avx512"} & built:
        return "avx2"
    return None


def int8_prefill(flags: frozenset[str] | set[str] | None = None, mode: str | None = None,
                 built: frozenset[str] | set[str] | None = None) -> bool:
    """Whether a batch runs the int8 GEMM on the weights it takes: CELLAR_PREFILL=i8 wherever the library
    has it, or auto on a CPU without AMX (AMX multiplies bf16 faster still)."""
    mode = prefill_mode() if mode is None else mode
    flags = cpu_flags() if flags is None else flags
    if mode not in ("auto", "i8") or int8_kernel(flags, built) is None:
        return False
    return mode == "i8" or "amx_bf16" not in flags


def int8_takes(qtype: int, shape: tuple[int, ...], flags: frozenset[str] | set[str] | None = None,
               built: frozenset[str] | set[str] | None = None) -> bool:
    """Whether the int8 GEMM takes a weight of this ggml type and torch-order shape (rows, cols) here."""
    types = INT8_PREFILL_TYPES if int8_kernel(flags, built) == "vnni" else INT8_AVX2_TYPES
    if len(shape) != 2 or int(qtype) not in types:
        return False
    rows, cols = shape
    return rows % INT8_PANEL_ROWS == 0 and cols % (256 if int(qtype) in (12, 13, 14) else 32) == 0
