"""Memory planner: KV layout, weights by place, JSON shape, verdicts, recommendations, model summary and
`cellar inspect`, from the tensor table only. Predicted-vs-measured peak RSS is in test_memory_calibration.py."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from engine.errors import BadModelFile, BadRequest
from engine.gguf import GGUFFile
from engine.memory import MARGIN_MIN, MiB, Settings, inspect_command, plan
from engine.model_info import hparams, model_summary
from tests.ggufgen import tiny_llama, write_gguf

BIG = 1 << 40          # "free" amounts that always fit
NO_GPU = None


@pytest.fixture(scope="module")
def smol(smollm2_path):
    with GGUFFile.open(smollm2_path, read_data=False) as g:
        yield g


@pytest.fixture(scope="module")
def gemma(gemma3_path):
    with GGUFFile.open(gemma3_path, read_data=False) as g:
        yield g


def _plan(g, **kw):
    free_vram = kw.pop("free_vram", NO_GPU)
    return plan(g, Settings(**kw), free_ram=kw.pop("free_ram", BIG), free_vram=free_vram)


def _kv_rows(p) -> int:
    return sum(r.kv for r in p.layers)


def test_kv_is_the_documented_layout_on_a_global_model(smol):
    # 30 layers x (K + V) x ctx cells x 3 kv heads * 64 dims x 2 bytes (f16), plus 3 int64 per cell
    p = _plan(smol, ctx=4096)
    assert _kv_rows(p) == 30 * 2 * 4096 * 192 * 2
    assert p.ram.sum("kv") == _kv_rows(p) + 24 * 4096
    # q8_0: 34 bytes per 32 values
    assert _kv_rows(_plan(smol, ctx=4096, kv_type="q8_0")) == 30 * 2 * 4096 * (192 // 32 * 34)


@pytest.mark.parametrize("ctx, swa_cells", [(512, 512), (4096, 1024), (32768, 1024)])
def test_kv_keeps_only_the_window_on_sliding_window_layers(gemma, ctx, swa_cells):
    p = _plan(gemma, ctx=ctx)
    per_cell = 2 * 256 * 2          # K + V, 1 kv head x 256 dims, f16
    assert _kv_rows(p) == 3 * ctx * per_cell + 15 * swa_cells * per_cell
    assert p.ram.sum("kv") == _kv_rows(p) + 24 * (ctx + swa_cells)      # two caches' cell bookkeeping
    assert [r.kv_cells for r in p.layers][:6] == [swa_cells] * 5 + [ctx]


def test_mmap_weights_are_the_whole_file_and_no_mmap_the_data_section(smol, gemma):
    for g in (smol, gemma):
        mm, priv = _plan(g, ctx=512), _plan(g, ctx=512, mmap=False)
        assert mm.ram.sum("weights") == g.file_size
        assert priv.ram.sum("weights") == g.file_size - g.data_offset
        assert all("file-backed" in i.note for i in mm.ram.items if i.concern == "weights")
        assert all("private" in i.note for i in priv.ram.items if i.concern == "weights")


def test_json_has_the_inspect_shape_and_totals_add_up(gemma):
    j = _plan(gemma, ctx=4096).to_json()
    for place in ("ram", "vram"):
        assert set(j[place]) == {"weights", "kv", "compute", "overhead", "total"}
        assert j[place]["total"] == sum(j[place][k] for k in ("weights", "kv", "compute", "overhead"))
        assert all(isinstance(v, int) for v in j[place].values())
    assert j["fits"] is True and j["vram"]["total"] == 0
    assert set(j["recommendation"]) == {"max_gpu_layers", "max_ctx"}
    json.dumps(j)


def test_verdict_against_what_is_free(smol):
    need = _plan(smol, ctx=4096).ram_peak_full_context
    assert plan(smol, Settings(ctx=4096), free_ram=need * 2 + MARGIN_MIN, free_vram=None).verdict == "fits"
    assert plan(smol, Settings(ctx=4096), free_ram=need + 1, free_vram=None).verdict == "tight"
    lacking = plan(smol, Settings(ctx=4096), free_ram=need - 1, free_vram=None)
    assert lacking.verdict == "won't fit" and lacking.fits is False and lacking.to_json()["fits"] is False


def test_max_ctx_is_the_largest_context_that_fits_with_the_margin(gemma):
    target = _plan(gemma, ctx=8192).ram_peak_full_context
    free = target + max(MARGIN_MIN, target // 10) + MiB
    rec = plan(gemma, Settings(ctx=4096), free_ram=free, free_vram=None).recommendation
    assert 8192 <= rec["max_ctx"] < 32768
    assert plan(gemma, Settings(ctx=rec["max_ctx"]), free_ram=free, free_vram=None).verdict == "fits"
    assert plan(gemma, Settings(ctx=rec["max_ctx"] + 256), free_ram=free, free_vram=None).verdict != "fits"
    assert _plan(gemma, ctx=512).recommendation["max_ctx"] == 32768     # everything fits: the trained context
    assert plan(gemma, Settings(ctx=512), free_ram=MiB, free_vram=None).recommendation["max_ctx"] == 0


def test_gpu_layers_move_weights_and_kv_to_vram(smol):
    cpu, gpu = _plan(smol, ctx=4096), _plan(smol, ctx=4096, gpu_layers=10, free_vram=BIG)
    per_layer_kv = 2 * 4096 * 192 * 2
    assert gpu.vram.sum("kv") == 10 * per_layer_kv and gpu.ram.sum("kv") == cpu.ram.sum("kv") - 10 * per_layer_kv
    assert _kv_rows(gpu) == _kv_rows(cpu)
    assert gpu.ram.sum("weights") == cpu.ram.sum("weights") - sum(r.weights for r in gpu.layers[20:])
    assert gpu.vram.sum("weights") >= sum(r.weights for r in gpu.layers[20:])   # packed: 256-byte aligned
    assert [r.place for r in gpu.layers] == ["ram"] * 20 + ["vram"] * 10
    assert gpu.recommendation["max_gpu_layers"] == 30


def test_max_gpu_layers_respects_free_vram(smol):
    ten = _plan(smol, ctx=4096, gpu_layers=10, free_vram=BIG).vram.total
    p = plan(smol, Settings(ctx=4096, gpu_layers=30), free_ram=BIG, free_vram=ten + MARGIN_MIN + MiB)
    assert p.verdict != "fits"
    assert 10 <= p.recommendation["max_gpu_layers"] < 30


def test_gpu_layers_without_a_gpu_do_not_fit_and_say_why(smol):
    p = _plan(smol, ctx=4096, gpu_layers=5)
    assert p.verdict == "won't fit" and any("no NVIDIA GPU" in n for n in p.notes)
    assert p.recommendation["max_gpu_layers"] == 0 and p.recommendation["max_ctx"] > 0


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_plan_reads_no_tensor_data(gemma3_path):
    rss0 = _rss_mib()
    with GGUFFile.open(gemma3_path, read_data=False) as g:
        p = plan(g, Settings(ctx=32768))
        with pytest.raises(ValueError):
            g.tensor_data("token_embd.weight")
        grown = _rss_mib() - rss0
    # metadata and vocabulary objects only: well under the 241 MiB of tensor data
    assert grown < 120, f"planning grew RSS by {grown:.0f} MiB"
    assert p.ram.total > 0


def test_model_summary(smol, gemma):
    s = model_summary(smol)
    assert (s["arch"], s["layers"], s["heads"], s["kv_heads"], s["head_dim"]) == ("llama", 30, 9, 3, 64)
    assert s["parameters"] == 134515008 and s["chat_template"] is True and s["sliding_window"] == 0
    assert set(s["quant_mix"]) == {"Q4_1", "Q8_0", "F32"} and s["quant_mix"]["Q8_0"]["bits_per_weight"] == 8.5
    assert s["file_size"] == smol.file_size and s["context_length"] == 8192 and s["tied_embeddings"] is True
    s = model_summary(gemma)
    assert (s["arch"], s["layers"], s["kv_heads"], s["head_dim"], s["vocab_size"]) == ("gemma3", 18, 1, 256, 262144)
    assert s["sliding_window"] == 512 and s["swa_pattern"] == "SSSSSG" * 3 and s["chat_template"] is False
    assert set(s["quant_mix"]) == {"Q5_0", "Q4_K", "Q6_K", "Q8_0", "F32"}


def test_q8_0_kv_needs_rows_of_whole_blocks(tmp_path):
    path = tiny_llama(tmp_path / "t.gguf", n_embd=48, n_head=4, n_head_kv=2)      # 2 x 12 values per row
    with GGUFFile.open(path, read_data=False) as g:
        assert _kv_rows(_plan(g, ctx=64)) == 2 * 2 * 64 * 24 * 2
        with pytest.raises(BadRequest, match="multiple of 32"):
            _plan(g, ctx=64, kv_type="q8_0")


def test_bad_settings_and_missing_metadata_are_typed_errors(tmp_path):
    with pytest.raises(BadRequest, match="KV type"):
        Settings(kv_type="f8")
    with pytest.raises(BadRequest, match="ctx"):
        Settings(ctx=0)
    path = write_gguf(tmp_path / "m.gguf", metadata={"general.name": "x"}, tensors={})
    with GGUFFile.open(path, read_data=False) as g, pytest.raises(BadModelFile, match="block_count"):
        hparams(g)


@pytest.mark.parametrize("as_json", [True, False])
def test_inspect_command(gemma3_path, capsys, as_json):
    args = SimpleNamespace(model=str(gemma3_path), ctx=32768, gpu_layers=0, kv_type="f16", no_mmap=True,
                           json=as_json, batch=512, mlock=False, threads=None)
    assert inspect_command(args) == 0
    out = capsys.readouterr().out
    if as_json:
        j = json.loads(out)
        assert j["settings"]["mmap"] is False and j["settings"]["ctx"] == 32768
        assert j["model"]["arch"] == "gemma3" and j["ram"]["total"] > j["ram"]["weights"] > 0
    else:
        assert "Total (RAM: predicted peak RSS)" in out and "sliding-window layers" in out
        assert "private (read into memory, --no-mmap)" in out and "SSSSSG" in out
