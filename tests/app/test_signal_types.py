"""PySide6 converts a Signal(dict) argument through QVariantMap: int keys are dropped with a warning and
each emit leaves Python's True/False refcounts short, which aborts the process later ("bool_dealloc").
The app's own signals carry dicts as `object`."""
from __future__ import annotations

import re
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
OTHERS: set[str] = set()


def test_no_app_signal_declares_dict():
    bad = []
    for path in sorted(APP.rglob("*.py")):
        if path.name in OTHERS:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"=\s*Signal\([^)]*\bdict\b", code):
                bad.append(f"{path.relative_to(APP.parent)}:{n}")
    assert bad == []
