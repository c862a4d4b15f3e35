"""The fast paths give the reference results: grouped-query attention as batched matmuls against
torch's SDPA, the chunked multi-threaded batched linear against dequantize + matmul, the work split
itself, prefill against token-by-token decode, and `cellar bench`'s figures."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import decode_native, kernels, ops, split
from engine.bench import run_bench
from engine.quant import GGMLType, QTensor, dequantize_torch
from engine.runtime import LoadOptions, Model
from tests.ggufgen import raw_tensor, tiny_llama


@pytest.mark.parametrize("n,n_kv,heads,heads_kv,d,scale", [
    (5, 9, 9, 3, 64, 0.125), (1, 7, 4, 1, 256, 1.0), (16, 16, 8, 8, 32, 0.3), (3, 20, 6, 2, 16, 0.5),
])
def test_attend_matches_sdpa(n, n_kv, heads, heads_kv, d, scale):
    g = torch.Generator().manual_seed(n * 100 + n_kv)
    q = torch.randn(n, heads, d, generator=g)
    K = torch.randn(n_kv, heads_kv, d, generator=g)
    V = torch.randn(n_kv, heads_kv, d, generator=g)
    ok = torch.rand(n, n_kv, generator=g) > 0.4
    ok[:, 0] = True                                     # every query sees at least one cell
    mask = torch.zeros(n, n_kv).masked_fill(~ok, float("-inf"))
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), K.transpose(0, 1), V.transpose(0, 1),
                                         attn_mask=mask, scale=scale, enable_gqa=heads != heads_kv)
    ref = ref.transpose(0, 1).reshape(n, -1)
    got = ops.attend(q, K, V, mask, scale)
    assert got.shape == (n, heads * d)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_attend_masked_cells_do_not_count():
    q, K, V = torch.randn(1, 2, 8), torch.randn(4, 1, 8), torch.randn(4, 1, 8)
    mask = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]])
    V2 = V.clone()
    V2[[1, 3]] = 1e6                                    # hidden cells: their values must not leak in
    torch.testing.assert_close(ops.attend(q, K, V, mask, 1.0), ops.attend(q, K, V2, mask, 1.0))


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_batched_linear_matches_dequantize_then_matmul(qtype, threads, dtype, monkeypatch):
    """CELLAR_PREFILL=f32: the chunked multi-threaded dequantize + matmul, in an f32 scratch (no bf16
    matmul unit) or a bf16 one (AMX / AVX-512 BF16; any CPU runs it, slowly): x and the weight rounded to
    bf16, the product too (torch's CPU bf16 matmul returns bf16), so bf16 is held to its 8-bit mantissa."""
    monkeypatch.setattr(ops, "PREFILL", "f32")
    monkeypatch.setattr(ops, "SCRATCH_DTYPE", dtype)
    rng = np.random.default_rng(int(qtype) * 10 + threads)
    rows, cols = 1000, 512                              # rows not a multiple of the chunk size
    w = QTensor("w", qtype, (rows, cols), raw_tensor(qtype, (rows, cols), rng).data)
    x = torch.from_numpy(rng.standard_normal((40, cols)).astype(np.float32))
    W = dequantize_torch(w.data, qtype, (rows, cols))
    ref = x @ W.T if dtype == torch.float32 else (x.bfloat16().double() @ W.bfloat16().double().T).float()
    before = kernels.get_threads()
    try:
        kernels.set_threads(threads)
        sc = ops.Scratch.for_weights([w])
        assert sc.buf.dtype == dtype
        got = ops.linear(x, w, sc)
    finally:
        kernels.set_threads(before)
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)
    else:
        scale = float(ref.abs().max())
        assert float((got - ref).abs().max()) <= 2 ** -8 * scale      # the output's own bf16 rounding
        assert float((got - x @ W.T).abs().max()) > 1e-5 * scale      # and it did run in bf16


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K])
def test_batched_linear_takes_the_gemm_bitwise_equal_to_the_gemv(qtype, monkeypatch):
    """CELLAR_PREFILL=gemm on the types with a tile kernel: the native GEMM, every output bitwise what
    the GEMV (decode) gives for that row; within the q8 activation's rounding of the f32 product."""
    if not kernels.AVAILABLE or not kernels.has_gemm():
        pytest.skip("native library not built")
    monkeypatch.setattr(ops, "PREFILL", "gemm")
    rng = np.random.default_rng(int(qtype))
    rows, cols = 300, 512
    w = QTensor("w", qtype, (rows, cols), raw_tensor(qtype, (rows, cols), rng).data)
    x = torch.from_numpy(rng.standard_normal((40, cols)).astype(np.float32))
    assert ops.use_gemm(w) == (ops.PREFILL != "f32" and kernels.gemm_tiled(w))
    if not ops.use_gemm(w):
        pytest.skip(f"no tile kernel for {qtype.name} on {kernels.ISA}")
    got = ops.linear(x, w, ops.Scratch.for_weights([w]))
    assert torch.equal(got, kernels.gemv(w, x))
    ref = x @ dequantize_torch(w.data, qtype, (rows, cols)).T
    assert float((got - ref).abs().max()) < 0.02 * float(ref.abs().max())


def test_scratch_holds_only_the_weights_that_dequantize(monkeypatch):
    """The f32 scratch is sized for the matrices a batch dequantizes: none when every weight takes the
    GEMM (CELLAR_PREFILL=gemm); a weight that needs it later (f32 set after load) grows it once."""
    monkeypatch.setattr(ops, "PREFILL", "gemm")
    monkeypatch.setattr(ops, "SCRATCH_DTYPE", torch.float32)
    rng = np.random.default_rng(2)
    q = QTensor("q", GGMLType.Q4_1, (64, 256), raw_tensor(GGMLType.Q4_1, (64, 256), rng).data)
    f = QTensor("f", GGMLType.F16, (32, 256), raw_tensor(GGMLType.F16, (32, 256), rng).data)
    expect_q = 1 if kernels.gemm_tiled(q) else 64 * 256
    assert ops.Scratch.for_weights([q]).buf.numel() == expect_q
    assert ops.Scratch.for_weights([q, f]).buf.numel() == max(expect_q, 32 * 256)
    sc = ops.Scratch.for_weights([q])
    monkeypatch.setattr(ops, "PREFILL", "f32")
    x = torch.from_numpy(rng.standard_normal((12, 256)).astype(np.float32))
    ref = x @ dequantize_torch(q.data, q.qtype, (64, 256)).T
    torch.testing.assert_close(ops.linear(x, q, sc), ref, rtol=1e-4, atol=1e-3)
    assert sc.buf.numel() == 64 * 256


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q6_K])
def test_bf16_matmul_in_row_chunks_is_bitwise_the_whole_matmul(qtype, monkeypatch):
    """BF16_SPLIT (AVX-512 BF16 without AMX): x's rows shared out between threads in blocks give bit for bit
    the one matmul's products, into the prefill's bf16 buffer (out) or as f32."""
    monkeypatch.setattr(ops, "PREFILL", "f32")
    monkeypatch.setattr(ops, "SCRATCH_DTYPE", torch.bfloat16)
    rng = np.random.default_rng(int(qtype))
    rows, cols = 1000, 512                              # rows not a multiple of the chunk size
    w = QTensor("w", qtype, (rows, cols), raw_tensor(qtype, (rows, cols), rng).data)
    x = torch.from_numpy(rng.standard_normal((40, cols)).astype(np.float32))
    before = kernels.get_threads()
    try:
        kernels.set_threads(2)
        sc = ops.Scratch.for_weights([w])
        got = {}
        for split_on in (False, True):
            monkeypatch.setattr(ops, "BF16_SPLIT", split_on)
            out = torch.full((40, rows), float("nan"), dtype=torch.bfloat16)
            got[split_on] = (ops.linear(x, w, sc), ops.linear(x.bfloat16(), w, sc, out=out), out)
    finally:
        kernels.set_threads(before)
    (whole, whole_out, _), (parts, parts_out, buf) = got[False], got[True]
    assert whole.dtype == parts.dtype == torch.float32 and torch.equal(whole, parts)
    assert parts_out is buf and torch.equal(whole_out, parts_out)


def test_bf16_matmul_is_shared_out_only_without_amx(monkeypatch):
    monkeypatch.delenv("CELLAR_BF16_SPLIT", raising=False)
    monkeypatch.setattr(ops, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert ops._bf16_split()
    monkeypatch.setattr(ops, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert not ops._bf16_split()
    monkeypatch.setenv("CELLAR_BF16_SPLIT", "1")
    assert ops._bf16_split()


def test_scratch_is_f32_without_a_bf16_matmul_unit(monkeypatch):
    monkeypatch.delenv("CELLAR_SCRATCH", raising=False)
    monkeypatch.setattr(ops, "_cpu_flags", lambda: {"avx2", "fma", "f16c"})
    assert ops.scratch_dtype() == torch.float32
    monkeypatch.setattr(ops, "_cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16", "amx_tile"})
    assert ops.scratch_dtype() == torch.bfloat16
    monkeypatch.setenv("CELLAR_SCRATCH", "f32")                  # the user's choice wins
    assert ops.scratch_dtype() == torch.float32
    monkeypatch.setenv("CELLAR_SCRATCH", "fp8")
    with pytest.raises(ValueError, match="CELLAR_SCRATCH"):
        ops.scratch_dtype()


def test_split_runs_each_task_once_and_raises_a_task_error():
    before = kernels.get_threads()
    try:
        kernels.set_threads(2)
        hits = [0] * 50
        lock = threading.Lock()

        def task(i):
            with lock:
                hits[i] += 1

        split.run([lambda i=i: task(i) for i in range(50)])
        assert hits == [1] * 50

        def bad():
            raise ValueError("boom")
        with pytest.raises(ValueError, match="boom"):
            split.run([lambda: None, bad, lambda: None])
        split.run([lambda i=i: task(i) for i in range(50)])   # still usable after an error
        assert hits == [2] * 50
    finally:
        kernels.set_threads(before)


def test_split_from_two_threads_at_once():
    before = kernels.get_threads()
    kernels.set_threads(2)
    counts = {0: 0, 1: 0}
    lock = threading.Lock()

    def caller(k):
        for _ in range(20):
            def t(k=k):
                with lock:
                    counts[k] += 1
            split.run([t] * 8)

    try:
        ts = [threading.Thread(target=caller, args=(k,)) for k in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=60)
        assert counts == {0: 160, 1: 160}
    finally:
        kernels.set_threads(before)


@pytest.fixture(scope="module")
def tiny_q(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("speed") / "tiny.gguf", qtype=GGMLType.Q8_0, n_embd=128, n_ff=256,
                      n_head=4, n_head_kv=2)


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("speed") / "tiny32.gguf", qtype=GGMLType.F32, n_embd=128, n_ff=256,
                      n_head=4, n_head_kv=2)


def test_prefill_logits_equal_decode_logits(tiny_f32, monkeypatch):
    """The batched path (dequantize + chunked matmul, attention over a ubatch) and the GEMV path
    (one token at a time) compute the same model. F32 weights: the GEMV on quantized types rounds x
    to 8 bits as llama.cpp does, which the dequantize + matmul path does not; an f32 scratch (a bf16 one
    rounds x and the products to 8 bits of mantissa: test_batched_linear_matches_dequantize_then_matmul)."""
    monkeypatch.setattr(ops, "SCRATCH_DTYPE", torch.float32)
    ids = [1] + [5 + (i * 7) % 50 for i in range(23)]
    m = Model.load(tiny_f32, LoadOptions(ctx=64, ubatch=32, threads=2, warmup=False))
    dec = decode_native.attach(m.net, m.kv)
    if dec is not None:   # the one-call decode layer with llama.cpp's f16 rounding in attention, as torch's
        dec.f32_attention(False)
    try:
        batched = m.eval(ids)
        m.reset()
        for t in ids:
            one = m.eval([t])
    finally:
        m.close()
    torch.testing.assert_close(batched, one, rtol=1e-4, atol=1e-4)
    assert int(batched.argmax()) == int(one.argmax())


@pytest.mark.parametrize("mode", ["mmap", "no-mmap", "mlock"])
def test_bench_reports_the_contract_figures(tiny_q, mode):
    out = run_bench(tiny_q, pp=16, tg=4, threads=2, ctx=64, mode=mode)
    for key in ("load_s", "pp_tok_s", "tg_tok_s", "peak_rss_mib", "base_rss_mib", "threads"):
        assert key in out, key
    assert out["threads"] == 2 and out["mode"] == mode and out["pp"] == 16 and out["tg"] == 4
    assert out["load_s"] > 0 and out["pp_tok_s"] > 0 and out["tg_tok_s"] > 0
    assert out["peak_rss_mib"] >= out["base_rss_mib"] > 0
    assert out["prefill"] in ("int8 (avx512-vnni)", "int8 (avx512)", "int8 (avx2)", "bf16 matmul", "f32 matmul") \
        or "," in out["prefill"], out["prefill"]
    if mode == "mlock":
        assert isinstance(out["mlock_locked"], bool)


def test_gemv_many_equals_one_gemv_per_weight():
    """One native call for weights sharing x (Q/K/V, gate/up), activation formats mixed, gives
    bitwise what separate GEMVs give, on every thread count."""
    rng = np.random.default_rng(7)
    cols = 512
    ws = [QTensor(f"w{i}", q, (r, cols), raw_tensor(q, (r, cols), rng).data)
          for i, (q, r) in enumerate([(GGMLType.Q4_1, 300), (GGMLType.Q4_K, 64), (GGMLType.Q6_K, 200),
                                      (GGMLType.Q8_0, 1)])]
    ws.append(QTensor("f", GGMLType.F32, (70, cols), rng.standard_normal(70 * cols).astype(np.float32).view(np.uint8)))
    x = torch.from_numpy(rng.standard_normal((1, cols)).astype(np.float32))
    before = kernels.get_threads()
    try:
        for threads in (1, 2):
            kernels.set_threads(threads)
            got = kernels.gemv_many(ws, x)
            for w, g in zip(ws, got):
                assert g.shape == (1, w.rows)
                assert torch.equal(g, kernels.gemv(w, x)), w.name
            assert [g.shape for g in kernels.gemv_many(ws[:2], x[0])] == [(300,), (64,)]
    finally:
        kernels.set_threads(before)
    with pytest.raises(ValueError, match="same number of columns"):
        kernels.gemv_many([ws[0], QTensor("o", GGMLType.Q8_0, (4, 256), raw_tensor(GGMLType.Q8_0, (4, 256), rng).data)], x)


def test_linear_many_takes_the_batched_path_for_several_rows():
    rng = np.random.default_rng(3)
    ws = [QTensor(f"w{i}", GGMLType.Q8_0, (96, 256), raw_tensor(GGMLType.Q8_0, (96, 256), rng).data) for i in range(2)]
    x = torch.from_numpy(rng.standard_normal((12, 256)).astype(np.float32))
    sc = ops.Scratch.for_weights(ws)
    for w, got in zip(ws, ops.linear_many(x, ws, sc)):
        torch.testing.assert_close(got, ops.linear(x, w, sc))


@pytest.mark.parametrize("n,n_kv,window", [(300, 300, 0), (300, 420, 0), (257, 257, 100), (200, 600, 128)])
def test_attend_in_blocks_matches_sdpa(n, n_kv, window):
    """A long ubatch attends in blocks of query rows over only the cells they can see (causal, with
    cached cells before it, with a sliding window) and gives what one SDPA call gives."""
    g = torch.Generator().manual_seed(n + n_kv + window)
    q = torch.randn(n, 6, 32, generator=g)
    K, V = torch.randn(n_kv, 2, 32, generator=g), torch.randn(n_kv, 2, 32, generator=g)
    qpos = torch.arange(n_kv - n, n_kv)[:, None]
    kpos = torch.arange(n_kv)[None, :]
    ok = kpos <= qpos
    if window:
        ok &= (qpos - kpos) < window
    mask = torch.zeros(n, n_kv).masked_fill(~ok, float("-inf"))
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), K.transpose(0, 1), V.transpose(0, 1),
                                         attn_mask=mask, scale=0.2, enable_gqa=True).transpose(0, 1).reshape(n, -1)
    torch.testing.assert_close(ops.attend(q, K, V, mask, 0.2), ref, rtol=1e-5, atol=1e-5)


def test_gelu_is_ggmls_table_and_the_native_geglu_gives_the_same_bits():
    """GELU(tanh) as llama.cpp's CPU geglu: the f16 table of the formula, 0 at x <= -10, x at x >= 10;
    the native one-pass GEGLU (prefill) bitwise what the torch lookup gives."""
    from engine.models import base
    g = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) * 6
    g[0, :6] = torch.tensor([-10.5, 10.5, -10.0, 10.0, 0.0, 1.0])
    u = torch.randn(64, 256, generator=torch.Generator().manual_seed(4))
    t = base.gelu_ggml(g)
    assert t[0, :5].tolist() == [0.0, 10.5, 0.0, 10.0, 0.0]
    formula = 0.5 * g * (1 + torch.tanh(0.7978845608028654 * (g + 0.044715 * g ** 3)))
    inside = g.abs() < 10
    assert float((t - formula)[inside].abs().max()) <= 2e-3 * float(formula.abs().max())  # an f16's rounding
    assert torch.equal(t[inside], t[inside].half().float())
    ref = t * u
    got = base.geglu_into(g.clone(), u)
    if base._native_geglu() is None:
        pytest.skip("native library not built: the torch lookup is the only path")
    assert torch.equal(got, ref)


def test_pool_rest_leaves_the_pool_working():
    """kernels.pool_rest() sends the native pool's idle workers to sleep at once (BF16_SPLIT calls it before
    its matmul); the next job wakes them and gives the same numbers."""
    if not kernels.AVAILABLE:
        pytest.skip("native library not built")
    rng = np.random.default_rng(5)
    w = QTensor("w", GGMLType.Q4_K, (256, 512), raw_tensor(GGMLType.Q4_K, (256, 512), rng).data)
    x = torch.from_numpy(rng.standard_normal((1, 512)).astype(np.float32))
    before = kernels.get_threads()
    try:
        kernels.set_threads(2)
        want = kernels.gemv(w, x)
        for _ in range(50):
            kernels.pool_rest()
            assert torch.equal(kernels.gemv(w, x), want)
    finally:
        kernels.set_threads(before)


@pytest.mark.parametrize("split_on", [False, True])
def test_bf16_matmul_into_f32_buffers(split_on, monkeypatch):
    """Beside the int8 GEMM the batched layer's buffers are f32 while a type it does not take (Q3_K) still
    runs the bf16 matmul: its product lands in the f32 buffer, the same numbers as the f32 result
    (the bf16 product widened), with and without the split between threads."""
    monkeypatch.setattr(ops, "PREFILL", "f32")
    monkeypatch.setattr(ops, "SCRATCH_DTYPE", torch.bfloat16)
    monkeypatch.setattr(ops, "BF16_SPLIT", split_on)
    rng = np.random.default_rng(7)
    rows, cols = 96, 256
    w = QTensor("w", GGMLType.Q3_K, (rows, cols), raw_tensor(GGMLType.Q3_K, (rows, cols), rng).data)
    x = torch.from_numpy(rng.standard_normal((40, cols)).astype(np.float32))
    before = kernels.get_threads()
    try:
        kernels.set_threads(2)
        sc = ops.Scratch(rows * cols, batch_dtype=torch.float32)
        assert sc.buf.dtype == torch.bfloat16 and sc.batch_dtype == torch.float32
        ref = ops.linear(x, w, sc)                            # f32: the bf16 product widened
        out = torch.full((40, rows), float("nan"))
        got = ops.linear(x, w, sc, out=out)
    finally:
        kernels.set_threads(before)
    assert got is out and torch.equal(out, ref)


def test_prefill_path_names_what_each_weight_runs(monkeypatch):
    rng = np.random.default_rng(3)
    q4 = QTensor("a", GGMLType.Q4_0, (64, 256), raw_tensor(GGMLType.Q4_0, (64, 256), rng).data)
    q3 = QTensor("b", GGMLType.Q3_K, (64, 256), raw_tensor(GGMLType.Q3_K, (64, 256), rng).data)
    monkeypatch.setattr(ops, "SCRATCH_DTYPE", torch.float32)
    monkeypatch.setattr(ops, "PREFILL", "f32")
    assert ops.prefill_path([q4, q3]) == "f32 matmul"
    monkeypatch.setattr(ops, "PREFILL", "i8")
    if kernels.AVAILABLE and kernels.qgemm_supported(q4):
        assert ops.prefill_path([q4, q4, q3]) == f"int8 ({kernels.ISA}) 2, f32 matmul 1"
    else:
        assert ops.prefill_path([q4, q3]) == "f32 matmul"
