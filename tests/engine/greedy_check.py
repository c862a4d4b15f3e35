"""Following llama.cpp's greedy continuations (tests/data/greedy_refs.json) with Cellar's runtime.

    refs = load_refs(); r = follow(model, refs.prompt("smollm2", "plain"), refs.run("smollm2", "f16", "plain"))
    r.first_flip (None when identical), r.flips [(step, ref_id, our_id, peer_margin)]

Cellar generates greedily; where its token differs from llama.cpp's, the peer's own logits say how
close the two tokens were there (the margin), and generation resumes from the reference's token
(the runtime's prompt reuse evaluates only the new tokens), so one flip at a near-tie does not hide
the rest of the continuation.

`others` are the same run from llama.cpp's other builds (greedy_refs_avx512.json): where such a build
had fed exactly the tokens followed so far, its logits at that step are as much llama.cpp's as the
followed build's, and the margin is the smaller of the two gaps. (The builds differ only in SIMD width;
on Gemma-3's 'code' prompt the AVX-512 build puts Cellar's token 0.71 below its pick at a step where the
AVX2 build, with the same 7 tokens fed, puts it 0.18 below.)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from engine.sampling import Sampler, SamplingParams

REFS_PATH = Path(__file__).resolve().parents[1] / "data" / "greedy_refs.json"


class Refs:
    def __init__(self, doc: dict):
        self.doc = doc

    def prompt(self, model: str, case: str) -> list[int]:
        return self.doc["models"][model]["prompts"][case]

    def cases(self, model: str) -> list[str]:
        return list(self.doc["models"][model]["prompts"])

    def run(self, model: str, kv_type: str, case: str) -> dict:
        return self.doc["models"][model]["kv"][kv_type]["runs"][case]


def load_refs(path: Path = REFS_PATH) -> Refs:
    return Refs(json.loads(Path(path).read_text()))


@dataclass
class Follow:
    n: int                                        # tokens compared
    flips: list[tuple[int, int, int, float]] = field(default_factory=list)

    @property
    def first_flip(self) -> int | None:
        return self.flips[0][0] if self.flips else None

    @property
    def matched_prefix(self) -> int:
        """Tokens identical to llama.cpp's before the first difference."""
        return self.n if not self.flips else self.flips[0][0]

    def count_above(self, level: float) -> int:
        """Differences where llama.cpp's gap was at least level (those below it are coin tosses)."""
        return sum(1 for f in self.flips if f[3] >= level)

    @property
    def max_margin(self) -> float:
        return max((f[3] for f in self.flips), default=0.0)


def peer_margin(top: list[list], ours: int) -> float:
    """How far llama.cpp's logit for `ours` was below its own pick (inf when not in its top 5)."""
    best = top[0][1]
    for tid, logit in top:
        if tid == ours:
            return best - logit
    return math.inf


def build_margin(ref: dict, others, step: int, ours: int) -> float:
    """llama.cpp's smallest gap between its pick and `ours` at step, over ref and those of `others`
    whose tokens before step are ref's (their top-5 at step came from the same fed tokens)."""
    want = ref["tokens"]
    runs = [ref] + [o for o in others if len(o["top"]) > step and o["tokens"][:step] == want[:step]]
    return min(peer_margin(r["top"][step], ours) for r in runs)


def follow(model, prompt: list[int], ref: dict, max_flips: int = 4, others=()) -> Follow:
    """Cellar's greedy continuation of prompt checked against ref ({"tokens", "top"}); others: the
    same run from llama.cpp's other builds (see the module docstring)."""
    want = ref["tokens"]
    greedy = Sampler(SamplingParams(temperature=0.0))
    out = Follow(len(want))
    model.reset()
    pos = 0
    while pos < len(want):
        r = model.generate(prompt + want[:pos], len(want) - pos, greedy)
        got = r.tokens
        j = next((i for i, (a, b) in enumerate(zip(got, want[pos:])) if a != b), None)
        if j is None and len(got) < len(want) - pos:       # stopped at an end-of-generation token
            if model.tokenizer.is_eog(want[pos + len(got)]):
                pos += len(got) + 1                         # llama.cpp's loop went on past it: so do we
                continue
            j = len(got)
        if j is None:
            break
        step = pos + j
        ours = got[j] if j < len(got) else model.tokenizer.eos_id
        out.flips.append((step, want[step], ours, build_margin(ref, others, step, ours)))
        if len(out.flips) >= max_flips:
            break
        pos = step + 1
    return out


def gap_errors(model, prompt: list[int], ref: dict) -> list[float]:
    """With llama.cpp's tokens fed back, at every step: |(our logit gap between llama.cpp's top two)
    - (llama.cpp's gap)|. Greedy ids hide errors that never flip a token; this sees them."""
    model.reset()
    logits = model.eval(prompt)
    out = []
    for i, tok in enumerate(ref["tokens"]):
        (a, la), (b, lb) = ref["top"][i][:2]
        out.append(abs(float(logits[a] - logits[b]) - (la - lb)))
        if i < len(ref["tokens"]) - 1:
            logits = model.eval([tok])
    return out
