"""--threads is honoured and the engine's threads stay bounded: a model loaded with threads=1 and =2 (and
switched live to 4 and back, as the app's setting does) is probed while it generates, in a fresh
process (tests/engine/thread_probe.py): how many threads it has, and how many are runnable at once."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def probe(model, *counts: int) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "tests.engine.thread_probe", str(model), *map(str, counts)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.slow
def test_one_thread_means_one_thread(smollm2_path):
    (one,) = probe(smollm2_path, 1)
    assert one["generating_max"] <= one["before"] + 3, one      # main, and no pools at all
    # one thread runs: never two runnable at once, and the main thread did the work (a native helper left
    # from load may take a scheduler tick or two, ~1% of the generation, which "busy" alone cannot tell)
    assert one["runnable_p99"] == 1 and one["main_share"] >= 0.95, one


@pytest.mark.slow
def test_two_threads_bounded_and_honoured_after_changes(smollm2_path):
    """Runnable threads: at most T + 1 (the native pool's workers spin ~0.1 ms after a job while the
    next one starts). Total threads: the native pool and the matmul split each keep T - 1 helpers, torch
    a few: bounded by the largest T used, and no growth from repeating a count."""
    two, four, two_again, two_thrice = probe(smollm2_path, 2, 4, 2, 2)
    assert two["runnable_p99"] <= 3 and two_again["runnable_p99"] <= 3, (two, two_again)
    assert four["runnable_p99"] <= 5, four
    assert two["generating_max"] <= 2 + 4 * 2, two
    assert max(r["generating_max"] for r in (four, two_again, two_thrice)) <= 2 + 4 * 4
    assert two_thrice["generating_max"] == two_again["generating_max"], (two_again, two_thrice)
