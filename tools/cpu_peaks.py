#!/usr/bin/env python3
"""The ceilings this CPU puts on Cellar's kernels (tools/cpu_peaks.c): int8 vpdpbusd and f32 FMA
throughput on one core, the int8 GEMM's mix of the two, and read bandwidth from memory on 1..N threads.
Built for the instruction sets this CPU reports (a measuring tool, not shipped).

    python tools/cpu_peaks.py [--threads 2]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    flags = cpu_flags()
    if not {"avx2", "fma"} <= flags:
        sys.exit("cpu_peaks: this CPU has no AVX2 + FMA, which the measurements need")
    isa = ["-mavx2", "-mfma"]
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        isa += ["-mavx512f", "-mavx512bw", "-mavx512vl"]
        if "avx512_vnni" in flags:
            isa.append("-mavx512vnni")
    with tempfile.TemporaryDirectory(prefix="cellar-peaks-") as tmp:
        exe = Path(tmp) / "cpu_peaks"
        subprocess.run(["gcc", "-O2", *isa, str(HERE / "cpu_peaks.c"), "-o", str(exe), "-lpthread"], check=True)
        subprocess.run([str(exe), str(a.threads)], check=True)


if __name__ == "__main__":
    main()
