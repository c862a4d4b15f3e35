import numpy as np
import pytest
import torch

from engine.errors import BadRequest
from engine.sampling import Sampler, SamplingParams


def logits(n=1000, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=n).astype(np.float32) * 3)


def test_greedy_is_argmax():
    x = logits()
    assert Sampler(SamplingParams(temperature=0)).sample(x) == int(torch.argmax(x))


def test_same_seed_same_tokens_and_different_seed_differs():
    x = logits()
    draw = lambda seed: [Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed)).sample(x)
                         for _ in range(1)] + [s.sample(x) for s in [Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed))] for _ in range(30)]
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_restricts_to_k_best():
    x = logits()
    best = set(torch.topk(x, 5).indices.tolist())
    s = Sampler(SamplingParams(temperature=5.0, top_k=5, top_p=1.0, min_p=0.0, seed=1))
    assert {s.sample(x) for _ in range(200)} <= best


def test_top_p_and_min_p_cut_the_tail():
    x = torch.tensor([10.0, 9.0, 0.0, -5.0])          # probs ~ 0.73, 0.27, 3e-5, ...
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0, seed=3))
    assert {s.sample(x) for _ in range(300)} == {0, 1}
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5, seed=3))
    assert {s.sample(x) for _ in range(300)} == {0}


def test_repeat_penalty_pushes_recent_tokens_down():
    x = torch.tensor([2.0, 1.9, -1.0])
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.5))
    assert s.sample(x, history=[0]) == 1
    assert s.sample(x, history=[2]) == 0


def test_frequency_and_presence_penalties_as_llama_cpp():
    """logit - (count x frequency + presence) for each token among the last repeat_last_n, after the
    repeat penalty, in f32 (llama.cpp's penalties sampler): token 0 seen 3 times, token 1 once."""
    x = torch.tensor([2.0, 1.8, 1.5])
    hist = [0, 1, 0, 0]
    greedy = lambda **kw: Sampler(SamplingParams(temperature=0, **kw)).sample(x, history=hist)
    assert greedy() == 0
    assert greedy(presence_penalty=0.6) == 2                    # 1.4, 1.2, 1.5
    assert greedy(presence_penalty=0.6, repeat_last_n=1) == 1   # only the last token (0) counts: 1.4, 1.8, 1.5
    assert greedy(frequency_penalty=0.2) == 1                   # 1.4, 1.6, 1.5
    assert greedy(frequency_penalty=-0.5) == 0                  # negative: repeats rewarded
    s = Sampler(SamplingParams(repeat_penalty=1.25, frequency_penalty=0.1, presence_penalty=0.05))
    got = s.penalize(x.numpy(), hist)
    f = np.float32
    want = np.array([f(2.0) / f(1.25) - (f(3) * f(0.1) + f(0.05)), f(1.8) / f(1.25) - (f(1) * f(0.1) + f(0.05)), 1.5],
                    dtype=np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert x.tolist() == [2.0, 1.7999999523162842, 1.5]              # the caller's logits untouched


def test_state_round_trip_continues_the_same_draws():
    x = logits()
    a = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11))
    [a.sample(x) for _ in range(5)]
    state = a.get_state()
    rest_a = [a.sample(x) for _ in range(20)]
    b = Sampler(SamplingParams(seed=99))
    b.set_state(state)
    assert [b.sample(x) for _ in range(20)] == rest_a


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=1.0),
                                 dict(top_k=-2), dict(repeat_penalty=0), dict(frequency_penalty=2.5),
                                 dict(presence_penalty=-3)])
def test_bad_params_are_rejected(bad):
    with pytest.raises(BadRequest):
        Sampler(SamplingParams(**bad))


def test_the_api_fields_reach_the_sampler():
    from engine.server_api import parse_generation
    g = parse_generation({"presence_penalty": 0.5, "frequency_penalty": -1.0, "max_tokens": 4})
    assert (g.params.presence_penalty, g.params.frequency_penalty) == (0.5, -1.0)
    assert parse_generation({}).params.presence_penalty == 0.0
