"""Token sampling: repetition, frequency and presence penalties, top-k, top-p, min-p, temperature, seeded
draw.

The chain and its order follow llama.cpp's default sampler (penalties -> top_k -> top_p -> min_p ->
temperature -> dist): top-p and min-p look at the distribution before temperature. Temperature <= 0
is greedy. The RNG is numpy's PCG64, whose state is plain data, so a session can save and restore it
and a restored run draws exactly the tokens an uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from engine.errors import BadRequest


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    frequency_penalty: float = 0.0     # minus this times a token's count in the last repeat_last_n
    presence_penalty: float = 0.0      # minus this once for a token there at all (OpenAI's; llama.cpp's)

    def validate(self) -> "SamplingParams":
        if not (self.temperature >= 0):
            raise BadRequest(f"temperature must be 0 or more (got {self.temperature})")
        if self.top_k < 0:
            raise BadRequest(f"top-k must be 0 (off) or more (got {self.top_k})")
        if not (0.0 < self.top_p <= 1.0):
            raise BadRequest(f"top-p must be in (0, 1] (got {self.top_p})")
        if not (0.0 <= self.min_p < 1.0):
            raise BadRequest(f"min-p must be in [0, 1) (got {self.min_p})")
        if not (self.repeat_penalty > 0):
            raise BadRequest(f"repeat penalty must be above 0 (got {self.repeat_penalty})")
        if self.repeat_last_n < 0:
            raise BadRequest(f"repeat-last-n must be 0 or more (got {self.repeat_last_n})")
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not (-2.0 <= v <= 2.0):
                raise BadRequest(f"{name.replace('_', ' ')} must be between -2 and 2 (got {v})")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class Sampler:
    def __init__(self, params: SamplingParams | None = None):
        self.params = (params or SamplingParams()).validate()
        seed = self.params.seed
        self.rng = np.random.Generator(np.random.PCG64(seed if seed is not None and seed >= 0 else None))

    def sample(self, logits, history: list[int] | tuple[int, ...] = ()) -> int:
        """Pick the next token from `logits` (torch or numpy, [n_vocab]) given the tokens so far."""
        p = self.params
        x = np.asarray(logits.detach().float().cpu().numpy() if hasattr(logits, "detach") else logits,
                       dtype=np.float32)
        x = self.penalize(x, history)
        if p.greedy:
            return int(np.argmax(x))
        return self._draw(x)

    def penalize(self, x: np.ndarray, history) -> np.ndarray:
        """The logits (f32) after the penalties: x itself when none applies, else a changed copy."""
        p = self.params
        penalized = p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
        if penalized and p.repeat_last_n > 0 and len(history):
            # llama.cpp's penalties sampler: over the last repeat_last_n tokens, each one seen is divided
            # (positive) or multiplied (negative) by the repeat penalty, then lowered by count x frequency
            # penalty + presence penalty
            recent, counts = np.unique(np.asarray(history[-p.repeat_last_n:], dtype=np.int64), return_counts=True)
            keep = (recent >= 0) & (recent < x.shape[0])
            recent, counts = recent[keep], counts[keep]
            if recent.size:
                x = x.copy()
                v = x[recent]
                if p.repeat_penalty != 1.0:
                    v = np.where(v > 0, v / np.float32(p.repeat_penalty), v * np.float32(p.repeat_penalty))
                v = v - (counts.astype(np.float32) * np.float32(p.frequency_penalty) + np.float32(p.presence_penalty))
                x[recent] = v.astype(np.float32)
        return x

    def _draw(self, x: np.ndarray) -> int:
        p = self.params
        n = x.shape[0]
        k = p.top_k if 0 < p.top_k < n else n
        if k < n:
            idx = np.argpartition(-x, k - 1)[:k]
        else:
            idx = np.arange(n)
        vals = x[idx]
        order = np.argsort(-vals, kind="stable")
        idx, vals = idx[order], vals[order].astype(np.float64)
        probs = np.exp(vals - vals[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            cut = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            idx, vals, probs = idx[:cut], vals[:cut], probs[:cut]
        if p.min_p > 0.0:
            keep = probs >= p.min_p * probs[0]
            idx, vals = idx[keep], vals[keep]
        scaled = vals / p.temperature
        w = np.exp(scaled - scaled.max())
        w /= w.sum()
        return int(idx[self.rng.choice(len(idx), p=w)])

    def get_state(self) -> dict:
        return {"params": asdict(self.params), "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        try:
            self.params = SamplingParams(**state["params"]).validate()
            bg = np.random.PCG64()
            bg.state = state["rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise BadRequest(f"sampler state is malformed ({e})") from None
        self.rng = np.random.Generator(bg)
