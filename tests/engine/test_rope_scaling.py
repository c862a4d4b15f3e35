"""RoPE scaling against llama.cpp: a rope_freqs tensor (Llama 3.1 and later divide each rotated pair's
frequency by it) and linear scaling from the metadata, on tiny llama models with random weights; the
reference is llama.cpp's logits for the same files (tools/make_tiny_refs.py, tests/data/tiny_refs.json).
The prompt runs as one batch and the last rows one token at a time (decode), so both paths are checked.
A scaling Cellar does not compute is refused with one line, and a bad rope_freqs tensor too."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import BadModelFile, UnsupportedModel
from tests.ggufgen import tiny_llama

pytest.importorskip("engine.runtime")

REFS = json.loads((Path(__file__).resolve().parents[1] / "data" / "tiny_refs.json").read_text())
CASES = {
    "rope_freqs": {"rope_freqs": [1.0, 1.0, 1.5, 2.0, 4.0, 8.0, 8.0, 32.0]},
    "linear": {"metadata": {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}},
}


def _logits(path, edit=None) -> np.ndarray:
    """Logits of the reference's last rows: the prompt as one batch up to the first of them, then one
    token at a time (decode). edit(model) may change the loaded weights first."""
    from engine.runtime import LoadOptions, Model
    m = Model.load(str(path), LoadOptions(ctx=128, threads=2, warmup=False))
    try:
        if edit is not None:
            edit(m)
        ids, last = REFS["ids"], REFS["last"]
        rows = [m.eval(ids[:len(ids) - last + 1])]
        rows += [m.eval([t]) for t in ids[len(ids) - last + 1:]]
        return torch.stack([r.reshape(-1) for r in rows]).float().numpy()
    finally:
        m.close()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The unscaled model's logits, and how far they are from llama.cpp's for it: the two engines'
    agreement on this tiny F32 model (f16 KV cache, different sum orders), ~5e-3 of logits near 1."""
    ours = _logits(tiny_llama(tmp_path_factory.mktemp("plain") / "plain.gguf", seed=7))
    return ours, float(np.abs(ours - np.asarray(REFS["cases"]["plain"], dtype=np.float32)).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_scaled_rope_matches_llama_cpp(tmp_path, case, plain):
    ref = np.asarray(REFS["cases"][case], dtype=np.float32)
    ours = _logits(tiny_llama(tmp_path / "m.gguf", seed=7, **CASES[case]))
    unscaled, agreement = plain
    err, without = float(np.abs(ours - ref).max()), float(np.abs(unscaled - ref).max())
    # as close to llama.cpp as the unscaled model is, and the scaling moves the logits ten times further
    assert agreement < 1e-2 and err <= 2 * agreement and without > 10 * agreement, (case, err, agreement, without)


def test_unsupported_scaling_and_bad_factors_are_one_line(tmp_path):
    from engine.gguf import GGUFFile
    from engine.models.llama import Llama
    p = tiny_llama(tmp_path / "yarn.gguf", metadata={"llama.rope.scaling.type": "yarn"})
    with pytest.raises(UnsupportedModel, match="RoPE scaling 'yarn' is not supported"):
        Llama.hparams(GGUFFile.open(p))
    p = tiny_llama(tmp_path / "short.gguf", rope_freqs=[1.0, 2.0])
    with pytest.raises(BadModelFile, match="'rope_freqs.weight' should be 8 F32 values"):
        Llama.hparams(GGUFFile.open(p))
    p = tiny_llama(tmp_path / "zero.gguf", rope_freqs=[1.0] * 7 + [0.0])
    with pytest.raises(BadModelFile, match="not a finite number above 0"):
        Llama.hparams(GGUFFile.open(p))
