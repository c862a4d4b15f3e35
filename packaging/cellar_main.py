"""Entry script of the bundle: the same `cellar` command as app.launcher:main, frozen.

Three things only a frozen program needs, done before the launcher runs:
- multiprocessing.freeze_support(): the engine worker is started with the spawn method, which re-runs
  this executable with the arguments multiprocessing gives it; this call turns such a run into the
  worker instead of a second `cellar`.
- `cellar -m pip ...`: `cellar pull` downloads models with `sys.executable -m pip`; in the bundle
  sys.executable is this program, so that form runs the bundled pip.
- CELLAR_BUNDLE_CHECK=1: print a JSON report on what the bundle holds and exit (see bundle_check.py).
"""
from __future__ import annotations

import multiprocessing
import os
import sys


def _run_module(argv: list[str]) -> int:
    import runpy
    name = argv[1]
    sys.argv = [name, *argv[2:]]
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def main() -> int:
    multiprocessing.freeze_support()
    argv = sys.argv[1:]
    if getattr(sys, "frozen", False) and len(argv) >= 2 and argv[0] == "-m" and argv[1] == "pip":
        return _run_module(argv)
    if os.environ.get("CELLAR_BUNDLE_CHECK", "") not in ("", "0"):
        from bundle_check import main as check_main
        return check_main()
    from app.launcher import main as launcher_main
    return launcher_main(argv)


if __name__ == "__main__":
    sys.exit(main())
