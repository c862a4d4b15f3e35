"""app/launcher.py: where Qt's X11 plugin lacks a system library, `cellar` says which and what to install,
and starts the terminal chat (Qt itself would abort with a core dump)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from app import launcher


def test_debian_package_names():
    assert launcher.debian_package("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert launcher.debian_package("libxcb-cursor.so.0") == "libxcb-cursor0"
    assert launcher.debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert launcher.debian_package("libodd") == "libodd"


@pytest.mark.parametrize("env, xcb", [
    ({"DISPLAY": ":0"}, True),
    ({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, False),
    ({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}, False),
    ({"WAYLAND_DISPLAY": "wayland-0", "QT_QPA_PLATFORM": "xcb"}, True),
    ({"QT_QPA_PLATFORM": "xcb;wayland"}, True),
    ({}, False),
])
def test_uses_xcb(monkeypatch, env, xcb):
    for k in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(launcher.sys, "platform", "linux")
    assert launcher.uses_xcb() is xcb


@pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("ldd")), reason="needs gcc and ldd")
def test_missing_libraries_reads_the_loader(tmp_path):
    """A real library linked against one that is then removed: ldd's 'not found', by soname."""
    (tmp_path / "stub.c").write_text("int cellar_stub(void) { return 1; }\n")
    (tmp_path / "needs.c").write_text("int cellar_stub(void);\nint needs(void) { return cellar_stub(); }\n")
    stub = tmp_path / "libcellarstub.so.3"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcellarstub.so.3", "-o", str(stub),
                    str(tmp_path / "stub.c")], check=True)
    needs = tmp_path / "libneeds.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(needs), str(tmp_path / "needs.c"), str(stub),
                    f"-Wl,-rpath,{tmp_path}"], check=True)
    assert launcher.missing_libraries(needs) == []
    stub.unlink()
    assert launcher.missing_libraries(needs) == ["libcellarstub.so.3"]


def test_no_window_without_the_libraries_starts_the_terminal_chat(monkeypatch, capsys):
    monkeypatch.setattr(launcher, "has_screen", lambda: True)
    monkeypatch.setattr(launcher, "missing_for_window", lambda: ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"])
    calls = []
    import engine.cli
    monkeypatch.setattr(engine.cli, "main", lambda argv: calls.append(argv) or 0)
    assert launcher.main([]) == 0
    assert calls == [["chat", "default"]]
    err = capsys.readouterr().err
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1" in err and "apt install libxcb-icccm4 libxcb-keysyms1" in err
    assert err.count("\n") == 1
