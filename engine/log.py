"""Logging to a rotating file under the platformdirs log dir; --verbose adds stderr."""
from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

import platformdirs


def log_dir() -> Path:
    return Path(os.environ.get("CELLAR_LOG_DIR") or platformdirs.user_log_dir("cellar"))


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger("cellar")
    if getattr(root, "_cellar_configured", False):
        return
    root.setLevel(logging.DEBUG)
    fmt = logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    try:
        d = log_dir()
        d.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(d / "cellar.log", maxBytes=2 << 20, backupCount=3,
                                                  encoding="utf-8")
        fh.setFormatter(fmt)
        fh.setLevel(logging.DEBUG)
        root.addHandler(fh)
    except OSError:
        pass                      # an unwritable log dir must never stop the program
    if verbose:
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        sh.setLevel(logging.DEBUG)
        root.addHandler(sh)
    root._cellar_configured = True
