"""The KV cache: cell operations, find-slot across sequences and sliding windows, the K-shift checked
against RoPE at the final position, Gemma-3's SWA sizing at ctx 8192, generation past the context,
and prompt reuse on the real models."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from engine.kv_cache import KVCache, KVMemory
from engine.models.base import Rope
from engine.prompting import chat_tokens
from engine.runtime import LoadOptions, Model
from engine.sampling import Sampler, SamplingParams

GREEDY = SamplingParams(temperature=0.0)


def cache(n_cells=16, width=8, kv_type="f16", window=0, layers=(0,)) -> KVCache:
    return KVCache("c", list(layers), n_cells, width, width, kv_type, window)


def claim(c: KVCache, seq: int, pos) -> np.ndarray:
    pos = np.asarray(pos, dtype=np.int64)
    slots = c.find_slot(pos, seq)
    assert slots is not None
    c.apply(slots, pos, seq)
    return slots


def positions(c: KVCache, seq: int) -> list[int]:
    return sorted(int(p) for p in c.pos[(c.seq & (1 << seq)) != 0])


# ---- cell operations ---------------------------------------------------------------------------------
def test_seq_rm_drops_a_range_and_frees_cells_no_other_sequence_uses():
    c = cache()
    claim(c, 0, range(8))
    c.seq_cp(0, 1, 0, 4)                       # seq 1 shares positions 0..3
    c.seq_rm(0, 2, 6)
    assert positions(c, 0) == [0, 1, 6, 7]
    assert positions(c, 1) == [0, 1, 2, 3]     # shared cells stay, now seq 1's alone
    assert c.used() == 6                       # cells of positions 4, 5 are free
    c.seq_rm(0, 6, -1)                         # p1 < 0: to the end
    assert positions(c, 0) == [0, 1]
    c.seq_rm(-1)                               # every sequence
    assert c.used() == 0 and c.seq_pos_max(1) == -1


def test_seq_cp_keep_and_pos_range():
    c = cache()
    claim(c, 0, range(5))
    claim(c, 2, range(10, 13))
    c.seq_cp(0, 1)
    assert positions(c, 1) == positions(c, 0) == [0, 1, 2, 3, 4]
    assert (c.seq_pos_min(2), c.seq_pos_max(2)) == (10, 12)
    c.seq_keep(1)
    assert positions(c, 1) == [0, 1, 2, 3, 4]
    assert positions(c, 0) == [] and positions(c, 2) == []
    assert c.used() == 5
    assert set(c.seq[c.seq != 0]) == {1 << 1}


def test_seq_add_moves_positions_and_drops_those_pushed_below_zero():
    c = cache()
    claim(c, 0, range(10))
    c.seq_add(0, 0, 3, -2)                     # positions 0, 1 fall below 0: dropped
    c.seq_add(0, 5, 10, 100)
    assert positions(c, 0) == [0, 3, 4, 105, 106, 107, 108, 109]
    assert c.has_shift


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("kv_type, tol", [("f16", 2e-3), ("bf16", 1.6e-2), ("q8_0", 2e-2)])
def test_k_shift_equals_rotating_by_the_total_position(neox, kv_type, tol):
    """seq_add + apply_shift re-rotates stored K: the result equals RoPE applied once at the final position."""
    heads, dim, n = 2, 64, 24
    rope = Rope(dim, 10000.0, neox, 4096)
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(n, heads, dim, generator=g)
    pos = np.arange(100, 100 + n, dtype=np.int64)
    c = cache(n_cells=32, width=heads * dim, kv_type=kv_type)
    slots = claim(c, 0, pos)
    k0 = rope(raw, pos).reshape(n, -1)
    c.write(0, slots, k0, k0)
    delta = np.where(np.arange(n) < 12, -37, 1500)           # two moves of different sizes
    c.seq_add(0, 100, 112, -37)
    c.seq_add(0, 112, 200, 1500)
    c.apply_shift(lambda il, k, d: rope(k.view(-1, heads, dim), d.numpy()).reshape(k.shape))
    assert not c.has_shift and (c.shift == 0).all()
    assert (c.pos[slots] == pos + delta).all()
    got, v = (t[torch.from_numpy(slots)] for t in c.read(0, c.n_kv()))
    want = rope(raw, pos + delta).reshape(n, -1)
    assert (got - want).abs().max() <= tol * want.abs().max()
    assert (k0 - want).abs().max() > 0.5 * want.abs().max()     # the shift really had to change K
    assert (v - k0).abs().max() <= tol * k0.abs().max()          # V is never rotated


# ---- find_slot ---------------------------------------------------------------------------------------
def test_find_slot_across_sequences_and_when_full():
    kv = KVMemory([cache(n_cells=12)])
    a = kv.find_slot(np.arange(0, 5), 0)
    b = kv.find_slot(np.arange(0, 4), 1)
    c2 = kv.find_slot(np.arange(5, 8), 0)
    got = np.concatenate([a[0], b[0], c2[0]])
    assert len(set(got.tolist())) == 12                      # every cell used once
    before = kv.caches[0].seq.copy()
    assert kv.find_slot(np.arange(8, 9), 0) is None           # full: nothing claimed
    assert (kv.caches[0].seq == before).all()
    kv.seq_rm(1)
    d = kv.find_slot(np.arange(8, 11), 0)
    assert sorted(d[0].tolist()) == sorted(b[0].tolist())[:3]  # seq 1's freed cells are reused
    assert positions(kv.caches[0], 0) == list(range(11))
    assert kv.seq_pos_max(0) == 10


def test_find_slot_fails_in_one_cache_claims_nothing_in_the_other():
    kv = KVMemory([KVCache("global", [0], 4, 8, 8), KVCache("other", [1], 8, 8, 8)])
    assert kv.find_slot(np.arange(5), 0) is None
    assert all(c.used() == 0 for c in kv.caches)


def test_sliding_window_cache_reuses_cells_that_left_the_window():
    window, ub = 4, 2
    c = cache(n_cells=window + ub, window=window)
    for p in range(0, 20, ub):                              # decode-like: one ubatch at a time
        claim(c, 0, [p, p + 1])
        ps = positions(c, 0)
        recent = list(range(max(0, p + 2 - window), p + 2))    # what the next position's window needs
        assert ps[-len(recent):] == recent and len(ps) <= window + ub
    # a second sequence cannot take seq 0's in-window cells
    c2 = cache(n_cells=window + 1, window=window)
    claim(c2, 0, range(3))                                  # all inside the window of position 3
    assert c2.find_slot(np.array([0, 1, 2]), 1) is None
    assert sorted(c2.find_slot(np.array([0, 1]), 1).tolist()) == [3, 4]
    claim(c2, 0, [3])                                       # now position 0 left seq 0's window:
    assert sorted(c2.pos[c2.find_slot(np.array([0, 1]), 1)].tolist()) == [-1, 0]   # its cell is free to reuse
    # a cell shared by two sequences is not reused by find_slot even when out of the window
    c3 = cache(n_cells=window + 1, window=window)
    claim(c3, 0, range(5))
    c3.seq_cp(0, 1, 0, 1)
    slots = c3.find_slot(np.array([5]), 0)
    assert slots is not None and c3.pos[slots].tolist() == [1]   # position 0's cell is shared: kept


def test_mask_sees_only_own_sequence_past_and_window():
    c = cache(n_cells=16, window=3)
    claim(c, 0, range(5))
    claim(c, 1, range(3))
    m = c.mask(np.array([4, 5]), 0, c.n_kv())
    ok = torch.isfinite(m).numpy()
    visible = [sorted(int(c.pos[j]) for j in np.flatnonzero(row)) for row in ok]
    assert visible == [[2, 3, 4], [3, 4]]                    # position 5 is not cached: its own cell is added by find_slot
    assert not ok[:, c.seq[:c.n_kv()] == 2].any()              # never seq 1's cells


# ---- real models -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol(smollm2_path):
    m = Model.load(smollm2_path, LoadOptions(ctx=1024, threads=2, warmup=False))
    yield m
    m.close()


@pytest.fixture(scope="module")
def gemma8k(gemma3_path):
    m = Model.load(gemma3_path, LoadOptions(ctx=8192, threads=2, warmup=False))
    yield m
    m.close()


def test_gemma3_kv_bytes_at_ctx_8192_follow_the_sliding_window_sizing(gemma8k):
    g = gemma8k.gguf
    n_layer = int(g.metadata["gemma3.block_count"])
    window = int(g.metadata["gemma3.attention.sliding_window"])
    n_kv_heads = int(g.metadata["gemma3.attention.head_count_kv"])
    head_dim = int(g.metadata["gemma3.attention.key_length"])
    n_global = n_layer // 6                                   # every sixth layer is global
    n_swa = n_layer - n_global
    ub = gemma8k.n_ubatch
    assert (n_layer, window, ub) == (18, 512, 512)
    cells = n_global * 8192 + n_swa * (window + ub)
    assert gemma8k.kv.nbytes == cells * 2 * n_kv_heads * head_dim * 2
    assert gemma8k.net.make_kv(8192, ub, "bf16").nbytes == cells * 2 * n_kv_heads * head_dim * 2
    assert gemma8k.net.make_kv(8192, ub, "q8_0").nbytes == cells * 2 * n_kv_heads * head_dim // 32 * 34
    full = n_layer * 8192 * 2 * n_kv_heads * head_dim * 2
    assert gemma8k.kv.nbytes < full / 3
    snap = gemma8k.kv_snapshot()
    assert sorted((c["name"], c["total"]) for c in snap["caches"]) == [("global", 8192), ("swa", window + ub)]


def _layer0(model: Model):
    """Layer 0's K and V rows of sequence 0, ordered by position, as f32."""
    c = model.kv.cache_of(0)
    cells = np.flatnonzero((c.seq & 1) != 0)
    cells = cells[np.argsort(c.pos[cells])]
    idx = torch.from_numpy(cells)
    return (c._load(c.k[0].index_select(0, idx), c.k_width), c._load(c.v[0].index_select(0, idx), c.v_width),
            c.pos[cells].tolist())


@pytest.mark.parametrize("which", ["smol", "gemma8k"])
def test_context_shift_rerotates_k_as_a_fresh_evaluation_would(request, which):
    """Layer 0's K depends on the token and its position only: after a context shift, the moved cells'
    K must equal what evaluating the kept tokens at their new positions writes."""
    model = request.getfixturevalue(which)
    toks = model.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 5, add_special=True)[:48]
    model.reset()
    model.eval(toks)
    n_drop = model.context_shift(0, n_keep=1)
    assert n_drop == (len(toks) - 1) // 2
    kept = toks[:1] + toks[1 + n_drop:]
    assert model.cached_tokens() == kept
    model.kv.apply_shift(model.net.rope_shift)
    k_shift, v_shift, pos = _layer0(model)
    assert pos == list(range(len(kept)))
    model.reset()
    model.eval(kept)
    k_fresh, v_fresh, _ = _layer0(model)
    scale = k_fresh.abs().max()
    assert (k_shift - k_fresh).abs().max() <= 4e-3 * scale
    assert (v_shift - v_fresh).abs().max() <= 4e-3 * v_fresh.abs().max()
    model.reset()


def test_second_chat_turn_evaluates_only_the_new_tokens(smol):
    smol.reset()
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    p1 = chat_tokens(smol, msgs)
    r1 = smol.generate(p1, 12, Sampler(GREEDY))
    assert r1.n_eval == len(p1) + len(r1.tokens) - (r1.stop_reason != "eos")
    msgs += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "And of Italy?"}]
    p2 = chat_tokens(smol, msgs)
    cached = smol.cached_tokens()
    common = next((i for i, (a, b) in enumerate(zip(cached, p2)) if a != b), min(len(cached), len(p2)))
    assert common >= len(p1)                                  # the whole first turn is reused
    r2 = smol.generate(p2, 8, Sampler(GREEDY))
    prompt_eval = r2.n_eval - (len(r2.tokens) - (r2.stop_reason != "eos"))
    assert prompt_eval == len(p2) - common
    assert prompt_eval < len(p2) - len(p1) + 3                # only the new turn (plus the reply's tail)
    smol.reset()                                              # the same tokens as from an empty cache
    fresh = smol.generate(p2, 8, Sampler(GREEDY))
    assert fresh.n_eval - (len(fresh.tokens) - (fresh.stop_reason != "eos")) == len(p2)
    assert fresh.tokens == r2.tokens


def test_run_whose_prompt_extends_the_cached_one(smol):
    smol.reset()
    tok = smol.tokenizer
    p1 = tok.encode("The capital of France is", add_special=True)
    smol.generate(p1, 0, Sampler(GREEDY))
    assert smol.cached_tokens() == p1
    ext = tok.encode(" Paris, and the capital of Spain is", add_special=False)
    r = smol.generate(p1 + ext, 6, Sampler(GREEDY))
    assert r.n_eval == len(ext) + len(r.tokens) - 1
    again = smol.generate(p1 + ext, 6, Sampler(GREEDY))       # the same prompt again: only its last token
    assert again.n_eval == 1 + len(again.tokens) - 1
    assert again.tokens == r.tokens
    smol.reset()
    fresh = smol.generate(p1 + ext, 6, Sampler(GREEDY))
    assert fresh.tokens == r.tokens and fresh.n_eval == len(p1 + ext) + 5


def _past_context(path, ctx: int, n: int):
    m = Model.load(path, LoadOptions(ctx=ctx, threads=2, warmup=False))
    try:
        prompt = chat_tokens(m, [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}])
        keep = len(prompt)
        sampler = Sampler(SamplingParams(temperature=0.7, top_k=40, top_p=0.95, repeat_penalty=1.1, seed=7))
        r = m.generate(prompt, n, sampler, n_keep=keep)
        cached = m.cached_tokens()
        return m.tokenizer, prompt, r, cached
    finally:
        m.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_generation_runs_three_times_past_the_context(request, name):
    ctx = 64
    tok, prompt, r, cached = _past_context(request.getfixturevalue(f"{name}_path"), ctx, 3 * ctx)
    eog_stop = r.stop_reason == "eos"
    assert r.stop_reason == "length" or eog_stop
    if eog_stop:                                             # an early end is allowed only past several shifts
        assert len(r.tokens) >= ctx
    assert r.n_shift >= 2
    assert len(cached) <= ctx and cached[:len(prompt)] == prompt   # the kept prompt survives every shift
    counts = Counter(r.tokens)
    assert counts.most_common(1)[0][1] < 0.2 * len(r.tokens)       # not one token repeated
    assert len(counts) > 0.25 * len(r.tokens)
    tail = r.tokens[-ctx // 2:]                                     # still varied after the last shift
    assert len(set(tail)) > len(tail) // 4
    assert "\ufffd" not in r.text


@pytest.mark.parametrize("window", [0, 5])
def test_cell_mask_blocks_are_the_whole_mask_over_the_cells_they_name(window):
    """A ubatch's mask made a block of query rows at a time (what attend reads at prefill, bounded by the
    block) equals the whole mask's rows over the block's cells, with nothing visible outside them."""
    c = KVCache("g", [0], 32, 8, 8, "f16", swa_window=window)
    c.apply(c.find_slot(np.arange(6), 1), np.arange(6), 1)            # another sequence's cells first
    pos = np.arange(20, dtype=np.int64)
    slots = c.find_slot(pos, 0)
    c.apply(slots, pos, 0)
    n_kv = c.n_kv()
    full = c.mask(pos, 0, n_kv)
    cm = c.cell_mask(pos, 0, n_kv)
    assert torch.equal(cm.full(), full) and cm.shape == (20, n_kv)
    for r0, r1 in [(0, 4), (4, 13), (13, 20)]:
        c0, c1, m = cm.block(r0, r1)
        assert torch.equal(m, full[r0:r1, c0:c1])
        outside = torch.cat([full[r0:r1, :c0], full[r0:r1, c1:]], 1)
        assert bool(torch.isinf(outside).all())
    for rows in ([19], [0, 7, 19], []):               # the last layer's rows that want logits
        assert torch.equal(cm.rows(rows).full(), full[rows])
        assert c1 - c0 <= n_kv and (c1 - c0 < n_kv or r1 == 20)


def test_read_f32_equals_read_and_reuses_one_buffer():
    c = KVCache("g", [0, 1], 16, 8, 8, "f16")
    rng = np.random.default_rng(0)
    for il in (0, 1):
        c.write(il, np.arange(10), torch.from_numpy(rng.standard_normal((10, 8)).astype(np.float32)),
                torch.from_numpy(rng.standard_normal((10, 8)).astype(np.float32)))
    K0, V0 = c.read_f32(0, 10)
    assert torch.equal(K0, c.read(0, 10)[0]) and torch.equal(V0, c.read(0, 10)[1])
    ptr = K0.data_ptr()
    K1, _ = c.read_f32(1, 7)
    assert K1.data_ptr() == ptr and torch.equal(K1, c.read(1, 7)[0])
