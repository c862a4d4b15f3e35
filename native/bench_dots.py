"""One quantized dot kernel at a time, one thread, on a model's own matrices (native/bench_dots.c):
min-of-N ns per row in L2 (hot), over every layer matrix of the type as decode reads them (sweep) and
over the output head (head). The machine is shared: compare builds in one run, alternating.

    python -m native.bench_dots MODEL.gguf [--types 3 6 8 12 14] [--isa avx512vnni] [--src native/src ...]
        [--reps 30] [--rounds 3] [--modes hot sweep head]

Each --src directory (native/src by default; e.g. a checkout of an older commit's native/src) is
compiled as native/build.py compiles the kernels for --isa, and the builds run in turn."""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from engine.gguf import GGUFFile

HERE = Path(__file__).resolve().parent
from native.build import BASE_FLAGS, ISA_FLAGS  # noqa: E402

QUANT = (3, 6, 7, 2, 8, 10, 11, 12, 13, 14)


def build(src: Path, isa: str, out: Path) -> Path:
    num, flags = ISA_FLAGS[isa]
    objs = []
    for name in ("q32.c", "qk.c"):
        obj = out.with_name(f"{out.name}_{name}.o")
        subprocess.run(["gcc", *BASE_FLAGS, *flags, f"-DCK_ISA={num}", "-c", str(src / name), "-o", str(obj)], check=True)
        objs.append(str(obj))
    subprocess.run(["gcc", "-O2", "-std=gnu11", f"-I{src}", f"-DSFX={isa}", str(HERE / "bench_dots.c"), *objs, "-o", str(out), "-lm"],
                   check=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--types", type=int, nargs="+", default=None, help="ggml type numbers (default: those in the model)")
    ap.add_argument("--isa", default="avx512vnni", choices=list(ISA_FLAGS))
    ap.add_argument("--src", type=Path, nargs="+", default=[HERE / "src"])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["hot", "sweep", "head"])
    args = ap.parse_args(argv)
    g = GGUFFile.open(args.model, read_data=False)
    with tempfile.TemporaryDirectory(prefix="cellar-dots-") as tmp:
        lst = Path(tmp) / "tensors.lst"
        types = set()
        with open(lst, "w") as f:
            for t in g.tensors.values():
                if len(t.shape) == 2 and int(t.qtype) in QUANT:
                    types.add(int(t.qtype))
                    f.write(f"{int(t.qtype)} {t.shape[0]} {t.shape[1]} {t.offset} {t.nbytes} {t.name}\n")
        bins = [build(s.resolve(), args.isa, Path(tmp) / f"dots{i}") for i, s in enumerate(args.src)]
        for qt in args.types or sorted(types):
            for mode in args.modes:
                best = [None] * len(bins)
                for _ in range(args.rounds):
                    for i, b in enumerate(bins):
                        line = subprocess.run([str(b), args.model, str(lst), str(qt), mode, str(args.reps)],
                                              capture_output=True, text=True, check=True).stdout.strip()
                        if line == "none":
                            break
                        ns = float(line.split("rows:")[1].split()[0])
                        if best[i] is None or ns < best[i][0]:
                            best[i] = (ns, line)
                for s, b in zip(args.src, best):
                    if b:
                        print(f"{b[1]}   [{s}]")


if __name__ == "__main__":
    main()
