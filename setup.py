"""Build glue: the native kernels are compiled by native/build.py during install (see native/README.md).

`pip install .` and `pip install -e .` both build native/libcellar_kernels.so when a C compiler is
present; without one the install still succeeds and Cellar runs its torch fallback.
"""
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def build_native() -> Path | None:
    sys.path.insert(0, str(ROOT))
    try:
        from native.build import BuildError, build
    finally:
        sys.path.pop(0)
    try:
        return build(verbose=False)
    except BuildError as e:
        print(f"note: native kernels not built ({str(e).splitlines()[0]}); "
              "Cellar will use its slower torch path. Build later with: python -m native.build")
        return None


class BuildPyWithNative(build_py):
    def run(self):
        super().run()
        lib = build_native()
        if lib is not None and not self.editable_mode:
            dest = Path(self.build_lib) / "native" / lib.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lib, dest)


setup(cmdclass={"build_py": BuildPyWithNative})
