"""The `cellar` entry point: a subcommand goes to the command line; no command starts the app.

Kept free of torch and Qt so that both front doors start fast. Where there is no screen, the
app cannot open, so the terminal chat starts instead and says why.
"""
from __future__ import annotations

import os
import sys

SUBCOMMANDS = {"run", "chat", "inspect", "bench", "pull", "tokenize", "serve"}


def has_screen() -> bool:
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal", "vnc"):
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


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
    from app.main import main as gui_main
    return gui_main(argv)


if __name__ == "__main__":
    sys.exit(main())
