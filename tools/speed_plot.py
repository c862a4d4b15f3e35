#!/usr/bin/env python3
"""docs/speed.png: prefill and decode tok/s of Cellar and llama.cpp against prompt length, at 1 and 2
threads, on both real models (tools/speed_sweep.py run for each engine, alternately, in one go).

    python tools/speed_plot.py [--peer-python /tmp/llamacpp-peer/bin/python] [--pp 32 128 512]
                               [--tg 32] [--out docs/speed.png] [--data docs/speed_sweep.json]
    python tools/speed_plot.py --replot         # redraw from the saved data only

Needs matplotlib (the dev extra). The machine's description goes into the title.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "tools" / "speed_sweep.py"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load avg {load:.1f}"


def models() -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    from engine.pull import resolve_model
    return {name: str(resolve_model(name)) for name in ("smollm2", "gemma3")}


def sweep(python: str, engine: str, model: str, a) -> dict:
    cmd = [python, str(SWEEP), model, "--engine", engine, "--pp", *map(str, a.pp), "--tg", str(a.tg),
           "--threads", *map(str, a.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def plot(data: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(data["runs"])
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.6 * len(names)), squeeze=False)
    styles = {"cellar": "-", "llama.cpp": "--"}
    for row, name in enumerate(names):
        for col, (key, label) in enumerate((("pp_tok_s", "prefill tok/s"), ("tg_tok_s", "decode tok/s"))):
            ax = axes[row][col]
            for run in data["runs"][name]:
                for nt in sorted({p["threads"] for p in run["points"]}):
                    pts = [p for p in run["points"] if p["threads"] == nt]
                    ax.plot([p["pp"] for p in pts], [p[key] for p in pts], styles.get(run["engine"], "-"),
                            marker="o", label=f"{run['engine']}, {nt} thread{'s' * (nt > 1)}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("prompt length (tokens)" if col == 0 else "context length (tokens)")
            ax.set_ylabel(label)
            ax.set_title(f"{name}: {label}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(data["machine"], fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", default="/tmp/llamacpp-peer/bin/python")
    ap.add_argument("--pp", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--tg", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "speed.png")
    ap.add_argument("--data", type=Path, default=ROOT / "docs" / "speed_sweep.json")
    ap.add_argument("--replot", action="store_true")
    a = ap.parse_args()
    if not a.replot:
        data = {"machine": machine(), "runs": {}}
        for name, path in models().items():
            data["runs"][name] = [sweep(a.peer_python, "llama.cpp", path, a), sweep(sys.executable, "cellar", path, a)]
        data["machine"] += f" -> {machine().rsplit('load avg', 1)[1].strip()} at the end"
        a.data.write_text(json.dumps(data, indent=1) + "\n")
    plot(json.loads(a.data.read_text()), a.out)
    print(a.out)


if __name__ == "__main__":
    main()
