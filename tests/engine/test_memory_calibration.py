"""The planner's `ram.total` against the measured peak RSS (ru_maxrss) of a fresh process that loads the
model with Model.load and generates a few tokens: within 5% on both real models, mmap and no-mmap."""
from __future__ import annotations

import pytest

from engine.memory import BASE_RSS
from engine.memory_probe import compare, measure_baseline

TOLERANCE = 0.05
SLOW = pytest.mark.slow
# Each case is a fresh process that loads the model and warms it up (10-40 s here); one runs by default.
CASES = [pytest.param("smollm2", 512, False, id="smollm2-512-no-mmap"),
         pytest.param("gemma3", 32768, True, id="gemma3-32768-mmap", marks=SLOW)]
CASES += [pytest.param(m, c, mm, id=f"{m}-{c}-{'mmap' if mm else 'no-mmap'}", marks=SLOW)
          for m, c in (("smollm2", 512), ("smollm2", 4096), ("gemma3", 512), ("gemma3", 4096), ("gemma3", 32768))
          for mm in (True, False) if (m, c, mm) not in (("smollm2", 512, False), ("gemma3", 32768, True))]


@pytest.mark.parametrize("model, ctx, mmap", CASES)
def test_predicted_peak_rss_is_within_5_percent(request, model, ctx, mmap):
    pytest.importorskip("engine.runtime", reason="engine/runtime.py is needed to measure a loaded model")
    path = request.getfixturevalue(f"{model}_path")
    c = compare(path, ctx, mmap=mmap)
    assert abs(c["error"]) <= TOLERANCE, (
        f"{model} ctx {ctx} {'mmap' if mmap else 'no-mmap'}: predicted {c['predicted'] / 2**20:.1f} MiB, "
        f"measured {c['measured'] / 2**20:.1f} MiB ({100 * c['error']:+.1f}%)")


@SLOW
def test_full_context_peak_is_within_5_percent(smollm2_path):
    c = compare(smollm2_path, 1024, fill=True)       # a 1015-token prompt: the second ubatch reads ~1000 cells
    assert abs(c["error"]) <= TOLERANCE, f"predicted {c['predicted'] / 2**20:.1f} MiB, measured {c['measured'] / 2**20:.1f} MiB"


def test_base_overhead_matches_a_fresh_engine_process():
    measured = measure_baseline()["peak_rss"]
    if abs(BASE_RSS - measured) / measured > TOLERANCE:      # once more: a busy machine can inflate one run
        measured = min(measured, measure_baseline()["peak_rss"])
    assert abs(BASE_RSS - measured) / measured <= TOLERANCE


def test_planner_counts_the_attention_blocks_ops_makes():
    """The planner keeps its own copy of ops' attention block sizes (it never imports torch)."""
    from engine import memory_model, ops
    assert (memory_model.ATTEND_BLOCK, memory_model.ATTEND_SCORES) == (ops.ATTEND_BLOCK, ops.ATTEND_SCORES)
