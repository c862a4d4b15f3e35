"""The layering rules: engine/ never imports Qt or app/, app/ never imports torch, and the client
side of the engine (protocol, client) loads without torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QT_ROOTS = {"PySide6", "PySide2", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6", "app"}
TORCH_ROOTS = {"torch"}


def imported_roots(path: Path) -> set[str]:
    """Top-level package names a source file imports, anywhere in it (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def offenders(tree: str, banned: set[str]) -> dict[str, set[str]]:
    bad = {}
    for path in sorted((ROOT / tree).rglob("*.py")):
        hit = imported_roots(path) & banned
        if hit:
            bad[str(path.relative_to(ROOT))] = hit
    return bad


def test_scanner_sees_imports_inside_functions(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    import torch.nn\n    from PySide6.QtCore import QObject\n"
                   "    importlib.import_module('pyqtgraph')\n")
    assert imported_roots(src) == {"torch", "PySide6", "pyqtgraph"}


def test_engine_never_imports_qt_or_app():
    assert (ROOT / "engine" / "worker.py").exists()
    assert offenders("engine", QT_ROOTS) == {}


def test_app_never_imports_torch():
    assert (ROOT / "app" / "engine_bridge.py").exists()
    assert offenders("app", TORCH_ROOTS) == {}


def test_client_side_loads_without_torch_or_qt():
    code = ("import sys, engine.client, engine.protocol, engine.telemetry\n"
            "bad = sorted(m for m in ('torch', 'numpy', 'PySide6') if m in sys.modules)\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
