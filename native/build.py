"""Compile native/src into native/libcellar_kernels.so with gcc (or $CC).

The kernel sources are compiled once per instruction set (scalar, AVX2, AVX-512, AVX-512 VNNI) into
separately named symbols; dispatch.c picks one at run time from what the CPU reports, so the library
is never built for the build machine's CPU alone. `python -m native.build [--out PATH] [--quiet]`.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
LIB_NAME = "libcellar_kernels.so"
KERNEL_SOURCES = ("q32.c", "qk.c", "qfloat.c")
COMMON_SOURCES = ("dispatch.c", "pool.c")
KERNEL_SOURCES += ("gemm.c", "qgemm.c")          # prefill tiles; int8 panels (VNNI)
COMMON_SOURCES += ("gemm_run.c",)
KERNEL_SOURCES += ("decode.c",)        # one-token decoder layer
COMMON_SOURCES += ("decode_entry.c",)
KERNEL_SOURCES += ("prefill.c", "softmax.c")       # the batched layer's small ops, attention's softmax
COMMON_SOURCES += ("prefill_entry.c",)
COMMON_SOURCES += ("vocab.c", "bpe.c", "spm.c")   # the tokenizer: vocabulary tables, BPE and SentencePiece merges
BASE_FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-pthread", "-fno-math-errno", "-Wall", "-Wno-unused-function"]

# (ISA number in common.h, flags); the scalar build uses the compiler's baseline only
ISA_FLAGS = {
    "scalar": (0, []),
    "avx2": (1, ["-mavx2", "-mfma", "-mf16c"]),
    "avx512": (2, ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl"]),
    "avx512vnni": (3, ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]),
}


class BuildError(RuntimeError):
    pass


def find_compiler() -> str | None:
    cc = os.environ.get("CC") or "gcc"
    return shutil.which(cc)


def _run(cmd: list[str], verbose: bool) -> None:
    if verbose:
        print(" ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\n{r.stderr.strip()}")


def _isas() -> list[str]:
    if platform.machine().lower() in ("x86_64", "amd64"):
        return list(ISA_FLAGS)
    return ["scalar"]


def build(out: Path | None = None, verbose: bool = False) -> Path:
    """Build the library; returns its path. Raises BuildError when no compiler or a compile fails."""
    cc = find_compiler()
    if cc is None:
        raise BuildError("no C compiler found (install gcc or set CC)")
    out = Path(out) if out else HERE / LIB_NAME
    with tempfile.TemporaryDirectory(prefix="cellar-build-") as tmp:
        objs, defines = [], []
        for isa in _isas():
            num, flags = ISA_FLAGS[isa]
            try:
                for src in KERNEL_SOURCES:
                    obj = Path(tmp) / f"{Path(src).stem}_{isa}.o"
                    _run([cc, *BASE_FLAGS, *flags, f"-DCK_ISA={num}", "-c", str(SRC / src), "-o", str(obj)], verbose)
                    objs.append(obj)
            except BuildError:
                if isa == "scalar":
                    raise
                if verbose:
                    print(f"note: {isa} kernels not built (compiler lacks the flags); skipping")
                objs = [o for o in objs if not o.stem.endswith("_" + isa)]
                if isa == "avx512":   # the VNNI build needs the AVX-512 one
                    break
                continue
            if isa == "avx2":
                defines.append("-DHAVE_AVX2")
            elif isa == "avx512vnni":
                defines.append("-DHAVE_AVX512")
        if "-DHAVE_AVX512" not in defines:
            objs = [o for o in objs if "_avx512" not in o.stem]
        for src in COMMON_SOURCES:
            obj = Path(tmp) / f"{Path(src).stem}.o"
            _run([cc, *BASE_FLAGS, *defines, "-c", str(SRC / src), "-o", str(obj)], verbose)
            objs.append(obj)
        tmp_lib = Path(tmp) / LIB_NAME
        _run([cc, "-shared", "-pthread", "-o", str(tmp_lib), *map(str, objs), "-lm"], verbose)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.copyfile(tmp_lib, staged)
        os.replace(staged, out)   # atomic: a process loading the old file keeps its mapping
        built = sorted({o.stem.rsplit("_", 1)[1] for o in objs if "_" in o.stem and o.stem.rsplit("_", 1)[1] in ISA_FLAGS})
        _write_manifest(out, built)
    return out


def manifest_path(lib: Path) -> Path:
    """The JSON next to the library that lists the instruction sets it was built with (read by
    engine/cpu_features.py, which must not load the library: the memory planner runs in the app too)."""
    return lib.with_suffix(".json")


def _write_manifest(lib: Path, isas: list[str]) -> None:
    import json
    path = manifest_path(lib)
    staged = path.with_name(path.name + f".tmp{os.getpid()}")
    staged.write_text(json.dumps({"isas": isas}) + "\n")
    os.replace(staged, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="build Cellar's native kernels")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        path = build(args.out, verbose=not args.quiet)
    except BuildError as e:
        print(f"error: native kernels not built: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
