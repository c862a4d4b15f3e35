"""The planner's `ram.total` against the measured peak RSS (ru_maxrss) of a fresh process that loads the
model with Model.load and generates a few tokens: within 5% on both real models, mmap and no-mmap."""
from __future__ import annotations

import pytest

from engine.memory import BASE_RSS
from engine.memory_probe import compare, measure_baseline

pytest.importorskip("engine.runtime", reason="engine/runtime.py is needed to measure a loaded model")

TOLERANCE = 0.05
CASES = [("smollm2", 512), ("smollm2", 4096), ("gemma3", 512), ("gemma3", 4096), ("gemma3", 32768)]


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "no-mmap"])
@pytest.mark.parametrize("model, ctx", CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_predicted_peak_rss_is_within_5_percent(request, model, ctx, mmap):
    path = request.getfixturevalue(f"{model}_path")
    c = compare(path, ctx, mmap=mmap)
    assert abs(c["error"]) <= TOLERANCE, (
        f"{model} ctx {ctx} {'mmap' if mmap else 'no-mmap'}: predicted {c['predicted'] / 2**20:.1f} MiB, "
        f"measured {c['measured'] / 2**20:.1f} MiB ({100 * c['error']:+.1f}%)")


def test_base_overhead_matches_a_fresh_engine_process():
    measured = measure_baseline()["peak_rss"]
    assert abs(BASE_RSS - measured) / measured <= TOLERANCE
