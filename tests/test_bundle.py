"""The `cellar` command through both front doors: the source tree (this venv's `cellar`) and the built
bundle dist/cellar/cellar (PyInstaller, `make bundle`; see packaging/README.md).

The bundle tests skip when no bundle has been built, since building takes minutes and CI does not
build it. CELLAR_BUNDLE=/path/to/cellar tests a bundle elsewhere. Everything runs headless
(QT_QPA_PLATFORM=offscreen), each command in a fresh process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import __version__
from engine.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = Path(os.environ.get("CELLAR_BUNDLE") or ROOT / "dist" / "cellar" / "cellar")
PROMPT = "The capital of France is"


def _bundle_cmd() -> list[str]:
    if not (BUNDLE.is_file() and os.access(BUNDLE, os.X_OK)):
        pytest.skip(f"no bundle at {BUNDLE}: build it with `make bundle` (takes minutes; see packaging/README.md)")
    return [str(BUNDLE)]


def _venv_cmd() -> list[str]:
    """The `cellar` script pip installed next to this interpreter (the pyproject entry point)."""
    script = Path(sys.executable).parent / "cellar"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "app.launcher"]


FRONT_DOORS = {"venv": _venv_cmd, "bundle": _bundle_cmd}


@pytest.fixture(params=sorted(FRONT_DOORS))
def cellar(request) -> list[str]:
    return FRONT_DOORS[request.param]()


def _run(cmd: list[str], *args: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, QT_QPA_PLATFORM="offscreen", **env)
    full_env.pop("DISPLAY", None)
    full_env.pop("WAYLAND_DISPLAY", None)
    cwd = Path.home() if cmd[0] == str(BUNDLE) else ROOT     # the bundle must not lean on the source tree
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


def test_version(cellar):
    r = _run(cellar, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"cellar {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(cellar, command):
    r = _run(cellar, command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: cellar {command}")
    assert "--help" in r.stdout
    assert r.stderr == ""


def test_top_level_help_lists_every_subcommand(cellar):
    r = _run(cellar, "--help")
    assert r.returncode == 0, r.stderr
    for command in COMMANDS:
        assert command in r.stdout


def test_bad_model_path_is_one_line_exit_2(cellar, tmp_path):
    r = _run(cellar, "run", str(tmp_path / "missing.gguf"), "-p", "x")
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def _smollm2() -> Path:
    from engine.pull import cached_path
    path = cached_path("smollm2")
    if path is None:
        pytest.skip("smollm2 has not been pulled (`cellar pull smollm2`, or `make models`)")
    return path


def _greedy_run(cmd: list[str], model: Path) -> dict:
    r = _run(cmd, "run", "smollm2", "--raw", "-p", PROMPT, "-n", "8", "--temp", "0", "--json", timeout=600,
             CELLAR_MODELS_DIR=str(model.parent))
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


# ---------------------------------------------------------------- the bundle only
def test_bundle_check_reports_every_part():
    """Native kernels loaded from inside the bundle, templates, resources, Qt + pyqtgraph offscreen
    with the unused Qt modules absent, and the engine worker process spawned from the frozen program."""
    cmd = _bundle_cmd()
    r = _run(cmd, timeout=300, CELLAR_BUNDLE_CHECK="1")
    report = json.loads(r.stdout.strip().splitlines()[-1])
    root = Path(report["root"])
    assert report["frozen"] is True
    assert root.resolve().is_relative_to(BUNDLE.parent.resolve())
    failed = {k: v for k, v in report.items() if isinstance(v, dict) and not v.get("ok")}
    assert not failed, failed
    assert report["native"]["available"] and report["native"]["isa"] != "none"
    assert all(Path(p).resolve().is_relative_to(root.resolve()) for p in report["native"]["loaded_from"])
    assert {"chatml", "gemma"} <= set(report["templates"]["names"])
    assert report["qt"]["icon_loaded"] and report["qt"]["excluded_but_present"] == []
    assert report["worker"]["reached_idle"] and report["worker"]["exit"] == 0
    assert report["worker"]["qt_in_worker"] == []                  # the engine process holds no Qt
    assert r.returncode == 0


def test_bundle_holds_no_test_data_or_headers():
    internal = Path(_bundle_cmd()[0]).parent / "_internal"
    assert (internal / "native" / "libcellar_kernels.so").is_file()
    assert (internal / "resources" / "cellar.desktop").is_file()
    for unwanted in ("torch/test", "torch/include", "torch/share"):
        assert not (internal / unwanted).exists(), unwanted
    assert not list((internal / "torch" / "lib").glob("*test*.so"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bundle_run_matches_source_tree():
    """`run` on SmolLM2, greedy: the bundle gives 8 tokens, and the very ones the source tree gives."""
    cmd = _bundle_cmd()
    model = _smollm2()
    frozen = _greedy_run(cmd, model)
    assert len(frozen["tokens"]) == 8
    assert frozen["prompt_tokens"] > 0 and isinstance(frozen["text"], str) and frozen["text"]
    source = _greedy_run(_venv_cmd(), model)
    assert frozen["tokens"] == source["tokens"]
    assert frozen["text"] == source["text"]
