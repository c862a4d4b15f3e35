"""The `cellar` entry point: a subcommand goes to the command line; no command starts the app.

Kept free of torch and Qt so that both front doors start fast. Where there is no screen, or Qt's X11
plugin cannot load for want of a system library (Qt itself would abort with a core dump and a hint that
names libxcb-cursor0 whichever library is missing), the app cannot open, so the terminal chat starts
instead and says why.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

SUBCOMMANDS = {"run", "chat", "inspect", "bench", "pull", "tokenize", "serve"}


def has_screen() -> bool:
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal", "vnc"):
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def uses_xcb() -> bool:
    """Whether Qt will open the window through its X11 (xcb) plugin: on Linux, unless told otherwise or in
    a Wayland session, where Qt 6 takes its Wayland plugin first."""
    if not sys.platform.startswith("linux"):
        return False
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()
    if platform:
        return platform == "xcb"
    wayland = os.environ.get("WAYLAND_DISPLAY") and os.environ.get("XDG_SESSION_TYPE") == "wayland"
    return bool(os.environ.get("DISPLAY")) and not wayland


def xcb_plugin() -> Path | None:
    """PySide6's X11 platform plugin, found without importing Qt."""
    spec = find_spec("PySide6")
    for base in (spec.submodule_search_locations or []) if spec else []:
        f = Path(base) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
        if f.is_file():
            return f
    return None


def missing_libraries(lib: Path) -> list[str]:
    """The shared libraries lib needs that the dynamic loader cannot find (ldd's 'not found'), in order;
    [] when all are there or ldd cannot tell."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    try:
        out = subprocess.run([ldd, str(lib)], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = re.findall(r"^\s*(\S+)\s+=>\s+not found", out, flags=re.M)
    return list(dict.fromkeys(names))


def debian_package(soname: str) -> str:
    """libxcb-icccm.so.4 -> libxcb-icccm4, libxkbcommon-x11.so.0 -> libxkbcommon-x11-0 (Debian's names)."""
    m = re.fullmatch(r"(.+)\.so\.(\d+).*", soname)
    if not m:
        return soname
    name, major = m.groups()
    return f"{name}{'-' if name[-1].isdigit() else ''}{major}"


def missing_for_window() -> list[str]:
    """The system libraries Qt's X11 plugin lacks here, where the window would open through it."""
    plugin = xcb_plugin() if uses_xcb() else None
    return missing_libraries(plugin) if plugin is not None else []


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and (argv[0] in SUBCOMMANDS or argv[0].startswith("-")):
        from engine.cli import main as cli_main
        return cli_main(argv)
    if not has_screen():
        sys.stderr.write("No screen found (neither DISPLAY nor WAYLAND_DISPLAY is set), so the window "
                         "cannot open: starting a terminal chat with the default model instead.\n")
        from engine.cli import main as cli_main
        return cli_main(["chat", "default", *argv])
    missing = missing_for_window()
    if missing:
        packages = " ".join(debian_package(m) for m in missing)
        sys.stderr.write(f"The window cannot open: Qt's X11 plugin needs {', '.join(missing)}, which this system "
                         f"lacks (Debian / Ubuntu: sudo apt install {packages}). Starting a terminal chat with "
                         "the default model instead.\n")
        from engine.cli import main as cli_main
        return cli_main(["chat", "default", *argv])
    from app.main import main as gui_main
    return gui_main(argv)


if __name__ == "__main__":
    sys.exit(main())
