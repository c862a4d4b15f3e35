"""A really full disk (a 256 KiB tmpfs, where this process may mount one) while saving a session: one
line saying so, the previous session file byte for byte intact and still readable, no temp file left.
tests/engine/test_session.py covers the same path by making the write raise ENOSPC."""
from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from engine.errors import CellarError
from engine.session_file import read_session_file, write_session_file


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", f"cellar-{uuid.uuid4().hex[:6]}", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_tmpfs_keeps_the_previous_session(tiny_disk: Path):
    path = tiny_disk / "chat.cellar"
    small = {"k": torch.arange(4096, dtype=torch.float16)}               # 8 KiB
    write_session_file(path, {"n_tokens": 5}, small)
    before = path.read_bytes()
    big = {"k": torch.ones(200_000, dtype=torch.float16)}                # 400 KiB: more than the disk
    with pytest.raises(CellarError) as e:
        write_session_file(path, {"n_tokens": 500}, big)
    msg = str(e.value)
    assert "no space left on the device" in msg and "\n" not in msg and str(path) in msg
    assert path.read_bytes() == before
    header, tensors = read_session_file(path)
    assert header["n_tokens"] == 5 and torch.equal(tensors["k"], small["k"])
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["chat.cellar"]
    write_session_file(path, {"n_tokens": 6}, small)                     # the disk works again afterwards
    assert read_session_file(path)[0]["n_tokens"] == 6
