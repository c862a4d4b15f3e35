"""engine/quant.py: type table, reference (numpy) and vectorized (torch) dequantizers against the
`gguf` package's implementation, on random blocks of every supported type and on real tensors."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from engine.gguf import GGUFFile
from engine.quant import BLOCK, SUPPORTED, GGMLType, QTensor, dequantize, dequantize_torch, row_nbytes
from tests.ggufgen import random_blocks

ALL_SUPPORTED = sorted(SUPPORTED)


def reference(raw: np.ndarray, qtype: GGMLType, shape) -> np.ndarray:
    rows = int(np.prod(shape[:-1]))
    return quants.dequantize(raw.reshape(rows, -1), GGMLQuantizationType(int(qtype))).reshape(shape)


def test_type_numbers_and_block_sizes_match_ggml():
    for t in GGMLType:
        ref = GGMLQuantizationType[t.name]
        assert int(ref) == int(t) and GGML_QUANT_SIZES[ref] == BLOCK[t], t.name
    assert set(BLOCK) == set(GGMLType)
    assert {t.name for t in SUPPORTED} == {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                                           "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def test_row_nbytes():
    assert row_nbytes(GGMLType.F32, 640) == 2560 and row_nbytes(GGMLType.BF16, 3) == 6
    assert row_nbytes(GGMLType.Q8_0, 640) == 20 * 34 and row_nbytes(GGMLType.Q4_K, 2048) == 8 * 144
    assert row_nbytes(GGMLType.Q6_K, 256) == 210 and row_nbytes(GGMLType.IQ2_XXS, 512) == 132
    with pytest.raises(ValueError, match="multiple of 256"):
        row_nbytes(GGMLType.Q4_K, 640)


@pytest.mark.parametrize("qtype", ALL_SUPPORTED, ids=lambda t: t.name)
def test_random_blocks_match_reference_exactly(qtype):
    rng = np.random.default_rng(int(qtype))
    block = BLOCK[qtype][0]
    shape = (3, 5, 4 * max(block, 32))
    raw = random_blocks(qtype, 3 * 5 * 4 * max(block, 32) // block, rng)
    mine = dequantize(raw, qtype, shape)
    assert mine.dtype == np.float32 and mine.shape == shape and np.isfinite(mine).all()
    np.testing.assert_array_equal(mine, reference(raw, qtype, shape))
    assert np.abs(mine).max() > 0
    t = dequantize_torch(torch.from_numpy(raw), qtype, shape)
    assert t.dtype == torch.float32 and tuple(t.shape) == shape
    assert torch.equal(t, torch.from_numpy(mine))
    assert torch.equal(dequantize_torch(torch.from_numpy(raw), qtype, shape, torch.bfloat16),
                       torch.from_numpy(mine).to(torch.bfloat16))


@pytest.mark.parametrize("qtype", ALL_SUPPORTED, ids=lambda t: t.name)
def test_arbitrary_bytes_agree_including_nan_and_inf(qtype):
    rng = np.random.default_rng(100 + int(qtype))
    block, nb = BLOCK[qtype]
    n_blocks = max(1, 4096 // block)
    raw = rng.integers(0, 256, size=n_blocks * nb, dtype=np.uint8)
    shape = (n_blocks * block,)
    mine = dequantize(raw, qtype, shape)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(mine, reference(raw, qtype, shape))   # NaNs compare equal here
    np.testing.assert_array_equal(dequantize_torch(torch.from_numpy(raw), qtype, shape).numpy(), mine)


REAL = {   # one tensor of each type in each model: (tensor, type)
    "smollm2": [("blk.0.attn_q.weight", GGMLType.Q4_1), ("token_embd.weight", GGMLType.Q8_0),
                ("blk.0.attn_norm.weight", GGMLType.F32)],
    "gemma3": [("blk.0.attn_q.weight", GGMLType.Q5_0), ("blk.0.ffn_down.weight", GGMLType.Q6_K),
               ("blk.0.attn_output.weight", GGMLType.Q4_K), ("token_embd.weight", GGMLType.Q8_0),
               ("blk.0.attn_norm.weight", GGMLType.F32)],
}


@pytest.mark.parametrize("model", sorted(REAL))
def test_real_tensors_match_reference(model, request):
    path = request.getfixturevalue(f"{model}_path")
    with GGUFFile.open(path) as g:
        for name, qtype in REAL[model]:
            info = g.tensors[name]
            assert info.qtype == qtype, name
            rows = min(64, int(np.prod(info.shape[:-1])))     # the first rows keep it fast
            shape = (rows, info.shape[-1]) if len(info.shape) > 1 else info.shape
            raw = g.tensor_data(name)[:rows * row_nbytes(qtype, info.shape[-1])]
            mine = dequantize(raw, qtype, shape)
            np.testing.assert_array_equal(mine, reference(np.array(raw), qtype, shape), err_msg=name)
            with warnings.catch_warnings():
                warnings.simplefilter("error")                # read-only mmap bytes, no copy, no warning
                t = dequantize_torch(raw, qtype, shape)
            assert torch.equal(t, torch.from_numpy(mine)), name
            assert np.isfinite(mine).all() and mine.std() > 0


def test_qtensor_on_a_real_weight(gemma3_path):
    with GGUFFile.open(gemma3_path) as g:
        info = g.tensors["blk.0.ffn_down.weight"]
        q = QTensor(info.name, info.qtype, info.shape, g.tensor_data(info.name))
        assert (q.rows, q.cols, q.row_bytes) == (640, 2048, 8 * 210) and q.nbytes == info.nbytes
        w = q.dequantize(torch.bfloat16)
        assert w.dtype == torch.bfloat16 and tuple(w.shape) == (640, 2048)
        first_row = dequantize(q.data[:q.row_bytes], q.qtype, (1, q.cols))
        assert torch.equal(w[:1], torch.from_numpy(first_row).to(torch.bfloat16))


def test_f32_result_does_not_alias_the_raw_bytes():
    raw = np.arange(4, dtype=np.float32).view(np.uint8).copy()
    t = dequantize_torch(torch.from_numpy(raw), GGMLType.F32, (4,))
    t += 1
    assert raw.view(np.float32).tolist() == [0.0, 1.0, 2.0, 3.0]
    b = dequantize_torch(torch.from_numpy(raw[:4]), GGMLType.BF16, (2,), torch.bfloat16)
    b += 1
    assert raw.view(np.float32)[0] == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="cannot dequantize IQ2_XXS"):
        dequantize(np.zeros(66, np.uint8), GGMLType.IQ2_XXS, (256,))
    with pytest.raises(ValueError, match="cannot dequantize Q8_K"):
        dequantize_torch(torch.zeros(292, dtype=torch.uint8), GGMLType.Q8_K, (256,))
    with pytest.raises(ValueError, match="needs 68 bytes, got 34"):
        dequantize(np.zeros(34, np.uint8), GGMLType.Q8_0, (2, 32))
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize_torch(torch.zeros(34, dtype=torch.uint8), GGMLType.Q8_0, (2, 16))


def test_reading_a_gguf_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, engine.gguf, engine.quant; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
