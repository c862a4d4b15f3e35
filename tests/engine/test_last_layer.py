"""A prompt's last layer runs past its K/V only for the rows that want logits, and a long prompt's
ubatches but the last run no output head (llama.cpp's output ids): the same next token, every layer's
cells still written, one head GEMV whatever the prompt's length."""
from __future__ import annotations

import pytest
import torch

from engine import kernels, runtime
from engine.runtime import LoadOptions, Model

PROMPT = ("The cellar keeps its bottles in rows, each labelled with the year and the valley it came from. "
          "Ask the keeper which one to open tonight and she will tell you a story first. ") * 6


@pytest.fixture(params=["smollm2", "gemma3"])
def model(request):
    path = request.getfixturevalue(f"{request.param}_path")
    m = Model.load(path, LoadOptions(ctx=512, ubatch=64, threads=2, warmup=False))
    yield m
    m.close()


def _all_rows(monkeypatch):
    """Steps that want every row's logits: the last layer runs whole (the path before pruning)."""
    real = runtime.Step

    def step(*a, **k):
        s = real(*a, **k)
        if s.out_rows is None:
            s.out_rows = list(range(len(s.ids)))
        return s
    monkeypatch.setattr(runtime, "Step", step)


def test_the_pruned_last_layer_gives_the_whole_layers_logits(model, monkeypatch):
    ids = model.tokenizer.encode(PROMPT, add_special=True)[:60]      # one ubatch
    pruned = model.eval(ids)
    model.reset()
    _all_rows(monkeypatch)
    whole = model.eval(ids)
    assert whole.shape == (len(ids), pruned.shape[0])
    # the last layer's matmuls of one row take the GEMV, of a ubatch the int8 GEMM: SmolLM2's Q4_1 gives
    # the same bits both ways; Gemma-3's K-quants meet activations quantized per 256 values in the GEMV
    # (llama.cpp's q8_K) and per 32 in the GEMM, 0.34 apart at most here (the last token decoded alone
    # is 0.62 from the whole ubatch's); a wrong row would be whole units away
    torch.testing.assert_close(pruned, whole[-1], rtol=0, atol=0.03 * float(whole[-1].abs().max()))
    assert int(pruned.argmax()) == int(whole[-1].argmax())


def test_a_long_prompt_runs_the_head_once_and_fills_every_layers_cells(model, monkeypatch):
    ids = model.tokenizer.encode(PROMPT, add_special=True)
    assert len(ids) > 2 * model.n_ubatch                                  # three ubatches or more
    head = [0]
    real_gemv = kernels.gemv

    def gemv(w, x, out=None):
        head[0] += w is model.net.output
        return real_gemv(w, x, out)
    monkeypatch.setattr(kernels, "gemv", gemv)
    logits = model.eval(ids)
    assert head[0] == 1 and logits.shape == (model.net.hp.n_vocab,)
    last = model.net.hp.n_layer - 1
    cache = model.kv.cache_of(last)
    k, v = cache.read(last, len(ids))
    for t in (k, v):                      # the last layer's K/V of every prompt token, not only the last
        assert bool((t[:len(ids)].abs().sum(1) > 0).all())
    # the next token after the prompt, and after the prompt given one token at a time at the end
    nxt = int(logits.argmax())
    model.reset()
    model.eval(ids[:-1])
    assert int(model.eval(ids[-1:]).argmax()) == nxt

