"""Build the Linux bundle dist/cellar/ (PyInstaller, one folder): `make bundle`, or
`.venv/bin/python packaging/build.py [--dist DIR] [--no-check]`.

Steps: install PyInstaller into the running environment when it is missing (a build tool, not a
dependency of Cellar), build the native kernels when they are missing, run packaging/cellar.spec,
strip the symbol tables off the torch libraries, check that no library in the bundle links to a file
that is neither in the bundle nor on the system, run the bundle once (`--version` and the bundle
check), and print its size and the build time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "packaging" / "cellar.spec"
PYINSTALLER = "pyinstaller==6.22.3"
# Not stripped by PyInstaller (stripping every library breaks some); these two carry ~90 MB of
# symbol tables that nothing at run time reads (the dynamic symbols stay).
STRIP = ("torch/lib/libtorch_cpu.so", "torch/lib/libtorch_python.so")


def say(msg: str) -> None:
    print(f"[bundle] {msg}", flush=True)


def ensure_pyinstaller() -> None:
    want = PYINSTALLER.split("==")[1]
    try:
        import PyInstaller
        if PyInstaller.__version__ == want:
            return
    except ImportError:
        pass
    say(f"installing {PYINSTALLER} into {sys.prefix}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", PYINSTALLER], check=True)


def ensure_native() -> None:
    if (ROOT / "native" / "libcellar_kernels.so").is_file():
        return
    say("building the native kernels")
    subprocess.run([sys.executable, "-m", "native.build", "--quiet"], cwd=ROOT, check=True)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def strip_libs(internal: Path) -> int:
    strip = shutil.which("strip")
    if strip is None:
        say("note: no `strip` found; the torch libraries keep their symbol tables")
        return 0
    saved = 0
    for rel in STRIP:
        lib = internal / rel
        if not lib.is_file():
            continue
        before = lib.stat().st_size
        subprocess.run([strip, "--strip-unneeded", str(lib)], check=True)
        saved += before - lib.stat().st_size
    return saved


def _elf_needed(path: Path) -> list[str]:
    r = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True)
    out = []
    for line in r.stdout.splitlines():
        if "(NEEDED)" in line and "[" in line:
            out.append(line.split("[", 1)[1].split("]", 1)[0])
    return out


def missing_libraries(bundle: Path) -> dict[str, list[str]]:
    """{library in the bundle: [names it links to that are neither in the bundle nor known to ldconfig]}."""
    if shutil.which("readelf") is None or shutil.which("ldconfig") is None and not Path("/sbin/ldconfig").exists():
        say("note: readelf or ldconfig missing; library links not checked")
        return {}
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    system = {line.split(" (", 1)[0].strip() for line in
              subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout.splitlines()[1:]}
    inside = {p.name for p in bundle.rglob("*.so*")}
    missing = {}
    for lib in bundle.rglob("*.so*"):
        if not lib.is_file() or lib.is_symlink():
            continue
        with open(lib, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        lost = [n for n in _elf_needed(lib) if n not in inside and n not in system]
        if lost:
            missing[str(lib.relative_to(bundle))] = lost
    return missing


def run_checks(exe: Path) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120, env=env)
    if r.returncode != 0:
        raise SystemExit(f"error: `{exe} --version` failed: {r.stderr.strip()[-500:]}")
    say(f"`cellar --version`: {r.stdout.strip()}")
    env["CELLAR_BUNDLE_CHECK"] = "1"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, env=env)
    try:
        report = json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise SystemExit(f"error: the bundle check printed no report: {r.stderr.strip()[-800:]}") from None
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="build the Cellar bundle (PyInstaller, one folder)")
    ap.add_argument("--dist", type=Path, default=ROOT / "dist", help="where cellar/ goes (default: dist)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller", help="PyInstaller's work folder")
    ap.add_argument("--no-check", action="store_true", help="skip running the bundle after the build")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    ensure_pyinstaller()
    ensure_native()
    say(f"running PyInstaller on {SPEC.relative_to(ROOT)}")
    subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
                    "--distpath", str(args.dist), "--workpath", str(args.work), str(SPEC)],
                   cwd=ROOT, check=True)
    bundle = args.dist / "cellar"
    saved = strip_libs(bundle / "_internal")
    if saved:
        say(f"stripped symbol tables off the torch libraries: {saved / 2**20:.0f} MiB")
    missing = missing_libraries(bundle)
    if missing:
        names = sorted({n for lost in missing.values() for n in lost})
        say(f"note: {len(missing)} libraries in the bundle link to system libraries this machine lacks: "
            f"{', '.join(names)} (the display plugins need them on a desktop; see packaging/README.md)")
    build_s = time.monotonic() - t0
    say(f"built {bundle} in {build_s:.0f} s; size {dir_size(bundle) / 2**20:.0f} MiB")
    if args.no_check:
        return 0
    report = run_checks(bundle / "cellar")
    for part in ("native", "templates", "resources", "qt", "worker"):
        state = "ok" if report.get(part, {}).get("ok") else f"FAILED {json.dumps(report.get(part))}"
        say(f"bundle check, {part}: {state}")
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
