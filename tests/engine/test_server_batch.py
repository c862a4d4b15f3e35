"""Multi-sequence batched decode: one forward step over tokens of several sequences sharing a KV cache.

Each sequence in a batch must get what it gets alone: same logits (to float tolerance) on a tiny model,
the same greedy tokens on SmolLM2; the mask keeps sequences apart, and on a sliding-window cache a
mixed batch sees only each token's own window.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import BadRequest
from engine.kv_cache import KVCache, KVMemory
from engine.runtime import ContextFull, LoadOptions, Model
from engine.sampling import Sampler, SamplingParams
from tests.ggufgen import tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_llama(tmp_path_factory.mktemp("batch") / "tiny.gguf")
    m = Model.load(path, LoadOptions(ctx=64, threads=1, n_seq=4))
    yield m
    m.close()


def _alone(model: Model, seq_tokens: list[list[int]]) -> list[torch.Tensor]:
    out = []
    for toks in seq_tokens:
        model.reset()
        out.append(model.eval(toks, seq_id=0).clone())
    model.reset()
    return out


def test_mixed_batch_logits_equal_each_sequence_alone(tiny):
    prompts = [[1, 5, 9, 12], [1, 7], [1, 30, 31, 32, 33, 34]]
    follow = [[20], [21, 22], [23]]
    ref = _alone(tiny, [p + f for p, f in zip(prompts, follow)])
    for s, p in enumerate(prompts):                         # prompts in separate steps, interleaved cells
        tiny.eval(p[:2], seq_id=s)
    for s, p in enumerate(prompts):
        if len(p) > 2:
            tiny.eval(p[2:], seq_id=s)
    logits = tiny.eval_batch([(s, f) for s, f in enumerate(follow)])
    assert logits.shape == (3, tiny.net.hp.n_vocab)
    for s in range(3):
        torch.testing.assert_close(logits[s], ref[s], rtol=1e-4, atol=1e-4)
        assert tiny.cached_tokens(s) == prompts[s] + follow[s]
    tiny.reset()


def test_batch_of_one_is_the_single_sequence_step(tiny):
    tiny.reset()
    a = tiny.eval([1, 4, 8, 15], seq_id=2).clone()
    tiny.reset()
    b = tiny.eval_batch([(2, [1, 4, 8, 15])])
    assert torch.equal(a, b[0])
    tiny.reset()


def test_batch_input_errors(tiny):
    tiny.reset()
    with pytest.raises(BadRequest, match="twice"):
        tiny.eval_batch([(0, [1]), (0, [2])])
    with pytest.raises(BadRequest, match="no tokens"):
        tiny.eval_batch([(0, [])])
    with pytest.raises(BadRequest, match="outside the vocabulary"):
        tiny.eval_batch([(0, [1]), (1, [10_000])])
    with pytest.raises(BadRequest, match="do not fit"):
        tiny.eval_batch([(0, [1] * 65)])
    assert tiny.kv.snapshot()["used"] == 0            # nothing claimed by a refused batch


def test_full_cache_claims_nothing(tiny):
    tiny.reset()
    for s in range(3):
        tiny.eval([1] * 20, seq_id=s)                  # 60 of 64 cells
    with pytest.raises(ContextFull):
        tiny.eval_batch([(0, [2, 3, 4]), (3, [5, 6])])
    assert tiny.kv.snapshot()["used"] == 60
    assert tiny.cached_tokens(3) == []
    tiny.reset()


def test_swa_mixed_batch_mask_and_slots():
    """Two sequences in one window-4 cache: each query sees its own sequence's last 4 positions only,
    and cells that left a sequence's window are reused for the next batch."""
    c = KVCache("swa", [0], n_cells=8, k_width=8, v_width=8, swa_window=4)
    kv = KVMemory([c])
    for p in range(5):                                   # seq 0 at 0..4, seq 1 at 0..2
        seqs = np.array([0, 1] if p < 3 else [0])
        slots = kv.find_slot(np.full(len(seqs), p), seqs)
        assert slots is not None
    pos, seqs = np.array([5, 3]), np.array([0, 1])
    slots = kv.find_slot(pos, seqs)
    assert slots is not None
    m = c.mask(pos, seqs, c.n_kv())
    for row, (p, s) in enumerate(zip(pos, seqs)):
        visible = sorted(int(c.pos[j]) for j in range(c.n_kv()) if m[row, j] == 0)
        assert visible == list(range(max(0, p - 3), p + 1)), (s, visible)
        assert all(c.seq[j] == 1 << s for j in range(c.n_kv()) if m[row, j] == 0)
    # the cache was full: seq 0's positions 0 and 1 had left its window (next position 5) and were
    # reused; seq 1's position 0 had not (next position 3), so it stays
    assert sorted(c.pos[c.seq == 1].tolist()) == [2, 3, 4, 5]
    assert sorted(c.pos[c.seq == 2].tolist()) == [0, 1, 2, 3]


def test_swa_cache_holds_a_window_per_sequence(tmp_path):
    from engine.models.base import Transformer
    path = tiny_llama(tmp_path / "t.gguf")
    m = Model.load(path, LoadOptions(ctx=64, threads=1, warmup=False))
    net = m.net
    net.hp.swa_window, net.hp.swa_layers = 8, frozenset({0})
    one = Transformer.make_kv(net, 64, 4, "f16")
    four = Transformer.make_kv(net, 64, 4, "f16", n_seq=4)
    assert [c.n_cells for c in one.caches] == [64, 12]
    assert [c.n_cells for c in four.caches] == [64, 36]
    m.close()


def _decode_together(m: Model, prompts: list[list[int]], n: int) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
    """Prompts read one after another (their cells interleave), then n greedy tokens each, all
    sequences decoded in one batched step per token."""
    logits = [[m.eval_batch([(s, p)])[0].clone()] for s, p in enumerate(prompts)]
    out = [[int(torch.argmax(lg[0]))] for lg in logits]
    for _ in range(n - 1):
        rows = m.eval_batch([(s, [o[-1]]) for s, o in enumerate(out)])
        for s, o in enumerate(out):
            o.append(int(torch.argmax(rows[s])))
            logits[s].append(rows[s].clone())
    return out, logits


def test_sequence_numbers_do_not_depend_on_the_others(tiny):
    """Bitwise: a sequence decoded in a batch of three, its cells interleaved with theirs, computes
    exactly what it computes alone in an empty cache."""
    prompts = [[1, 5, 9, 12, 3], [1, 7], [1, 30, 31, 32]]
    tiny.reset()
    together, lg_together = _decode_together(tiny, prompts, 6)
    for s, p in enumerate(prompts):
        tiny.reset()
        alone, lg_alone = _decode_together(tiny, [p], 6)
        assert alone[0] == together[s]
        assert all(torch.equal(a, b) for a, b in zip(lg_alone[0], lg_together[s]))
    tiny.reset()


@pytest.mark.slow
def test_smollm2_batched_greedy_equals_alone(smollm2_path):
    """Three prompts decoded together give, bit for bit, the logits and tokens each gets alone; and
    alone, the batched path's greedy tokens are `generate`'s."""
    m = Model.load(smollm2_path, LoadOptions(ctx=512, threads=2, n_seq=3))
    tok = m.tokenizer
    texts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
    prompts = [tok.encode(t, add_special=True) for t in texts]
    n = 24
    together, lg_together = _decode_together(m, prompts, n)
    for s, p in enumerate(prompts):
        m.reset()
        alone, lg_alone = _decode_together(m, [p], n)
        assert alone[0] == together[s], texts[s]
        assert all(torch.equal(a, b) for a, b in zip(lg_alone[0], lg_together[s])), texts[s]
    m.reset()
    ref = m.generate(prompts[0], n, Sampler(SamplingParams(temperature=0))).tokens
    m.close()
    cut = next((i for i, t in enumerate(together[0]) if tok.is_eog(t)), n)
    assert together[0][:cut] == ref
