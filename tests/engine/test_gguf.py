"""engine/gguf.py: reading tiny generated files and the two real models; every malformation class."""
from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from gguf import GGUFValueType

from engine.errors import BadModelFile, UnsupportedModel
from engine.gguf import GGUFFile
from engine.quant import GGMLType
from tests.ggufgen import Typed, find, key_value_at, patch, raw_tensor, tensor_info_at, tiny_llama, write_gguf


def one_line_error(exc_type, path, match: str, **kw):
    with pytest.raises(exc_type) as info:
        GGUFFile.open(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg, msg
    assert match in msg, msg
    return msg


@pytest.fixture
def two_tensors(tmp_path):
    """Two F32 tensors a.weight [4, 32] and b.weight [2, 32], one metadata array and two int keys."""
    rng = np.random.default_rng(1)
    return write_gguf(tmp_path / "t.gguf", metadata={"x.key1": 7, "x.key2": 8, "x.arr": np.arange(5, dtype=np.int32)},
                      tensors={"a.weight": rng.standard_normal((4, 32)).astype(np.float32),
                               "b.weight": rng.standard_normal((2, 32)).astype(np.float32)})


# ---- well-formed files --------------------------------------------------------------------------
def test_all_metadata_types_round_trip(tmp_path):
    V = GGUFValueType
    meta = {
        "t.u8": Typed(200, V.UINT8), "t.i8": Typed(-5, V.INT8), "t.u16": Typed(60000, V.UINT16),
        "t.i16": Typed(-30000, V.INT16), "t.u32": Typed(4_000_000_000, V.UINT32), "t.i32": Typed(-7, V.INT32),
        "t.f32": Typed(1.5, V.FLOAT32), "t.bool": Typed(True, V.BOOL), "t.str": "héllo ✓",
        "t.u64": Typed(2**63 + 5, V.UINT64), "t.i64": Typed(-2**40, V.INT64), "t.f64": Typed(0.1, V.FLOAT64),
        "t.strs": ["a", "", "ünï", "x" * 300], "t.f32s": np.array([1.0, -2.5], np.float32),
        "t.bools": np.array([True, False, True]), "t.i64s": np.array([-1, 2**40], np.int64),
        "t.nested": [[1, 2, 3], [4, 5]], "t.nested_strs": [["a", "b"], ["c"]],
    }
    path = write_gguf(tmp_path / "m.gguf", metadata=meta, tensors={"w": np.ones((2, 32), np.float32)})
    with GGUFFile.open(path) as g:
        m = g.metadata
        assert (m["t.u8"], m["t.i8"], m["t.u16"], m["t.i16"]) == (200, -5, 60000, -30000)
        assert (m["t.u32"], m["t.i32"], m["t.u64"], m["t.i64"]) == (4_000_000_000, -7, 2**63 + 5, -2**40)
        assert m["t.f32"] == 1.5 and m["t.f64"] == 0.1 and m["t.bool"] is True and m["t.str"] == "héllo ✓"
        assert m["t.strs"] == ["a", "", "ünï", "x" * 300]
        assert m["t.f32s"].dtype == np.float32 and m["t.f32s"].tolist() == [1.0, -2.5]
        assert m["t.bools"].tolist() == [True, False, True] and m["t.i64s"].tolist() == [-1, 2**40]
        assert [a.tolist() for a in m["t.nested"]] == [[1, 2, 3], [4, 5]]
        assert m["t.nested_strs"] == [["a", "b"], ["c"]]
        assert g.arch == "llama" and g.get("missing", 3) == 3 and g.require("t.u8") == 200


def test_tensor_table_data_and_modes(tmp_path):
    path = tiny_llama(tmp_path / "m.gguf", qtype=GGMLType.Q4_K, n_embd=256, n_ff=512, n_head=2, n_head_kv=1)
    g = GGUFFile.open(path)
    t = g.tensors["blk.0.ffn_down.weight"]
    assert t.shape == (256, 512) and t.ne == (512, 256) and t.qtype == GGMLType.Q4_K
    assert t.nbytes == 256 * 2 * 144 and t.offset % g.alignment == 0 and t.offset >= g.data_offset
    assert list(g.tensors)[0] == "token_embd.weight" and g.tensors["output_norm.weight"].qtype == GGMLType.F32
    view = g.tensor_data(t.name)
    assert view.dtype == np.uint8 and view.ndim == 1 and view.nbytes == t.nbytes and not view.flags.writeable
    raw = path.read_bytes()
    assert view.tobytes() == raw[t.offset:t.offset + t.nbytes]
    with GGUFFile.open(path, mmap=False) as p:
        assert not p.mmapped and all(np.array_equal(p.tensor_data(n), g.tensor_data(n)) for n in g.tensors)
        assert p.resident_bytes() > 0
    with GGUFFile.open(path, read_data=False) as h:
        assert h.tensors == g.tensors and h.resident_bytes() == 0
        with pytest.raises(ValueError):
            h.tensor_data(t.name)
    g.close()
    assert view.tobytes()[:16] == raw[t.offset:t.offset + 16]   # views outlive close()


def test_version_2_and_custom_alignment(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", alignment=64, tensors={"a": np.ones(32, np.float32),
                                                                   "b": np.ones(48, np.float32)})
    patch(path, 4, "<I", 2)
    with GGUFFile.open(path) as g:
        assert g.version == 2 and g.alignment == 64 and g.data_offset % 64 == 0
        assert all(t.offset % 64 == 0 for t in g.tensors.values())
        assert g.tensor_data("b").view(np.float32).tolist() == [1.0] * 48


def test_mlock_reports_instead_of_failing(two_tensors):
    with GGUFFile.open(two_tensors, mlock=True) as g:
        r = g.mlock_report
        assert r.requested and "\n" not in r.message
        assert (r.locked and r.locked_bytes > 0) or ("mlock refused" in r.message or "not available" in r.message)


def test_mlock_refusal_names_the_limit(two_tensors, monkeypatch):
    import errno
    import engine.gguf as reader
    monkeypatch.setattr(reader, "_memlock_limit", lambda: 8 * 2**20)
    monkeypatch.setattr(reader, "_mlock", lambda addr, length: errno.ENOMEM)
    with GGUFFile.open(two_tensors, mlock=True) as g:
        r = g.mlock_report
        assert (r.requested, r.locked, r.locked_bytes) == (True, False, 0)
        assert r.message.startswith("mlock refused: RLIMIT_MEMLOCK is 8 MiB, the model needs")
        assert "ulimit -l" in r.message
    monkeypatch.setattr(reader, "_memlock_limit", lambda: None)
    monkeypatch.setattr(reader, "_mlock", lambda addr, length: errno.EINVAL)
    with GGUFFile.open(two_tensors, mlock=True, mmap=False) as g:
        assert not g.mlock_report.locked and "Invalid argument" in g.mlock_report.message


def test_memlock_limit_is_raised_to_the_hard_limit():
    import resource
    from engine.gguf import _memlock_limit
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    limit = _memlock_limit()
    assert resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] == hard
    assert limit == (None if hard == resource.RLIM_INFINITY else hard)


# ---- not a GGUF at all --------------------------------------------------------------------------
@pytest.mark.parametrize("content,match", [
    (b"", "empty file"),
    (b"PK\x03\x04" + b"\0" * 60, "zip archive"),
    (b"hello, this is a text file\n" * 3, "text file"),
    (b"<!DOCTYPE html><html>404</html>", "HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
    (struct.pack("<Q", 60) + b'{"w": {"dtype": "F32"}}' + b" " * 40, "safetensors"),
    (b"FUGG" + b"\0" * 30, "big-endian"),
    (b"\x00\x01\x02\x03" * 8, "starts with bytes 00 01 02 03"),
])
def test_bad_magic_says_what_the_file_looks_like(tmp_path, content, match):
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    one_line_error(BadModelFile, path, match)


def test_missing_file_and_directory(tmp_path):
    one_line_error(BadModelFile, tmp_path / "nope.gguf", "no such file")
    one_line_error(BadModelFile, tmp_path, "directory")


@pytest.mark.parametrize("version,match", [(1, "version 1"), (7, "unknown GGUF version 7"),
                                           (0x03000000, "big-endian")])
def test_unknown_version(two_tensors, version, match):
    patch(two_tensors, 4, "<I", version)
    one_line_error(BadModelFile, two_tensors, match)


def test_truncated_anywhere(tmp_path, two_tensors):
    data = two_tensors.read_bytes()
    path = tmp_path / "cut.gguf"
    with GGUFFile.open(two_tensors, read_data=False) as g:
        header_end = g.data_offset
    cuts = list(range(4, header_end + 8)) + [len(data) - 1, len(data) - 100]
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(BadModelFile) as info:
            GGUFFile.open(path)
        assert "\n" not in str(info.value), cut


# ---- lying headers: checked before anything is allocated ----------------------------------------
@pytest.mark.parametrize("offset,value,match", [(8, 2**60, "tensors, more than"), (16, 2**60, "metadata entries")])
def test_absurd_header_counts(two_tensors, offset, value, match):
    patch(two_tensors, offset, "<Q", value)
    one_line_error(BadModelFile, two_tensors, match)


def test_absurd_array_and_string_lengths(two_tensors):
    at = key_value_at(two_tensors, "x.arr")
    data = two_tensors.read_bytes()
    for length in (2**62, 2**40, 1_000_000):
        patch(two_tensors, at + 8, "<Q", length)         # type u32, element type u32, then length
        t0 = time.perf_counter()
        one_line_error(BadModelFile, two_tensors, "claims")
        assert time.perf_counter() - t0 < 5      # refused from the header, never allocated or read
    two_tensors.write_bytes(data)
    patch(two_tensors, find(two_tensors, b"x.key1") - 8, "<Q", 2**61)   # a key's own length
    one_line_error(BadModelFile, two_tensors, "claims")


def test_absurd_string_array_element(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", metadata={"x.strs": ["aa", "bb", "cc"]})
    patch(path, find(path, b"bb") - 8, "<Q", 2**50)
    one_line_error(BadModelFile, path, "string 1 of 'x.strs' claims")


def test_unknown_metadata_value_type(two_tensors):
    patch(two_tensors, key_value_at(two_tensors, "x.key1"), "<I", 13)
    one_line_error(BadModelFile, two_tensors, "unknown value type 13")


@pytest.mark.parametrize("n_dims,match", [(0, "0 dimensions"), (5, "5 dimensions")])
def test_bad_dimension_count(two_tensors, n_dims, match):
    patch(two_tensors, tensor_info_at(two_tensors, "a.weight"), "<I", n_dims)
    one_line_error(BadModelFile, two_tensors, match)


def test_zero_and_overflowing_dims(two_tensors):
    at = tensor_info_at(two_tensors, "a.weight")
    data = two_tensors.read_bytes()
    patch(two_tensors, at + 4 + 8, "<Q", 0)
    one_line_error(BadModelFile, two_tensors, "zero-sized dimension")
    two_tensors.write_bytes(data)
    patch(two_tensors, at + 4, "<Q", 2**62)
    patch(two_tensors, at + 4 + 8, "<Q", 2**62)
    one_line_error(BadModelFile, two_tensors, "overflow")
    two_tensors.write_bytes(data)
    patch(two_tensors, at + 4 + 8, "<Q", 2**40)            # fits in int64 but not in the file
    one_line_error(BadModelFile, two_tensors, "runs past the end")


def test_offsets_unaligned_past_end_and_overlapping(two_tensors):
    at = tensor_info_at(two_tensors, "b.weight") + 4 + 2 * 8 + 4   # n_dims, 2 dims, type -> offset
    data = two_tensors.read_bytes()
    patch(two_tensors, at, "<Q", 4 * 32 * 4 + 4)
    one_line_error(BadModelFile, two_tensors, "not aligned to 32")
    patch(two_tensors, at, "<Q", 2**40)
    one_line_error(BadModelFile, two_tensors, "runs past the end")
    patch(two_tensors, at, "<Q", 32)
    one_line_error(BadModelFile, two_tensors, "overlap")
    two_tensors.write_bytes(data[:-40])
    one_line_error(BadModelFile, two_tensors, "runs past the end")


def test_duplicate_names(two_tensors):
    data = two_tensors.read_bytes()
    patch(two_tensors, find(two_tensors, b"b.weight"), "<c", b"a")
    one_line_error(BadModelFile, two_tensors, "tensor a.weight appears twice")
    two_tensors.write_bytes(data)
    patch(two_tensors, find(two_tensors, b"x.key2") + 5, "<c", b"1")
    one_line_error(BadModelFile, two_tensors, "'x.key1' appears twice")


@pytest.mark.parametrize("meta,match", [
    ({"general.architecture": Typed(3, GGUFValueType.UINT32)}, "'general.architecture' should be str but is uint32"),
    ({"llama.context_length": "4096"}, "'llama.context_length' should be int but is string"),
    ({"llama.context_length": 4096.0}, "'llama.context_length' should be int but is float32"),
    ({"llama.attention.head_count": ["a"]}, "should be int or int[]"),
    ({"tokenizer.ggml.tokens": np.arange(3, dtype=np.int32)}, "'tokenizer.ggml.tokens' should be str[]"),
    ({"general.alignment": 48}, "not a power of two"),
    ({"general.alignment": 0}, "not a power of two"),
    ({"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.scores": np.zeros(3, np.float32)}, "has 3 entries"),
])
def test_wrong_metadata_types(tmp_path, meta, match):
    path = write_gguf(tmp_path / "m.gguf", metadata=meta, tensors={"w": np.ones(32, np.float32)})
    one_line_error(BadModelFile, path, match)


def test_missing_required_key(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", arch=None)
    with GGUFFile.open(path) as g:
        with pytest.raises(BadModelFile, match="'general.architecture' is missing"):
            g.arch


@pytest.mark.parametrize("raw,match", [(99, "ggml type 99, which Cellar does not know"),
                                       (16, "uses IQ2_XXS, which Cellar does not support yet"),
                                       (15, "uses Q8_K"), (34, "uses TQ1_0"), (26, "uses I32")])
def test_unsupported_tensor_types(tmp_path, raw, match):
    path = write_gguf(tmp_path / "m.gguf", tensors={"blk.0.attn_q.weight": np.ones((4, 256), np.float32)})
    patch(path, tensor_info_at(path, "blk.0.attn_q.weight") + 4 + 16, "<I", raw)
    msg = one_line_error(UnsupportedModel, path, match)
    assert "blk.0.attn_q.weight" in msg and "Q4_K_M/Q8_0/F16" in msg


def test_row_not_whole_blocks(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", tensors={"w": raw_tensor(GGMLType.Q8_0, (2, 64))})
    patch(path, tensor_info_at(path, "w") + 4, "<Q", 48)
    one_line_error(BadModelFile, path, "not a whole number of Q8_0 blocks")


# ---- the real models ----------------------------------------------------------------------------
def test_smollm2_matches_reference_reader(smollm2_path):
    from gguf import GGUFReader
    t0 = time.perf_counter()
    g = GGUFFile.open(smollm2_path)
    open_s = time.perf_counter() - t0
    ref = GGUFReader(smollm2_path)
    assert open_s < 10       # a hang guard only: open speed is a benchmark figure (~0.06 s idle)
    assert [t.name for t in ref.tensors] == list(g.tensors) and len(g.tensors) == 272
    for t in ref.tensors:
        mine = g.tensors[t.name]
        assert mine.ne == tuple(int(x) for x in t.shape) and int(mine.qtype) == int(t.tensor_type)
        assert mine.offset == t.data_offset and mine.nbytes == t.n_bytes
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight"):
        ref_t = next(t for t in ref.tensors if t.name == name)
        assert np.array_equal(g.tensor_data(name), np.asarray(ref_t.data).view(np.uint8).reshape(-1))
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        mine, theirs = g.metadata[key], field.contents()
        if isinstance(mine, np.ndarray):
            assert np.array_equal(mine, np.asarray(theirs)), key
        else:
            assert mine == theirs, key
    assert g.arch == "llama" and g.metadata["llama.block_count"] == 30
    assert g.data_offset == ref.data_offset and g.version == 3
    g.close()


def test_gemma3_opens_fast_with_known_values(gemma3_path):
    t0 = time.perf_counter()
    g = GGUFFile.open(gemma3_path)
    open_s = time.perf_counter() - t0
    assert open_s < 10       # a hang guard only: open speed is a benchmark figure (~0.15 s idle)
    assert g.arch == "gemma3" and len(g.tensors) == 236 and g.metadata["gemma3.block_count"] == 18
    assert g.metadata["gemma3.attention.sliding_window"] == 512
    tokens = g.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 262144 and tokens[:3] == ["<pad>", "<eos>", "<bos>"]
    assert g.metadata["tokenizer.ggml.scores"].shape == (262144,)
    assert g.metadata["tokenizer.ggml.token_type"][:3].tolist() == [3, 3, 3]
    emb = g.tensors["token_embd.weight"]
    assert (emb.shape, emb.qtype, emb.offset, emb.nbytes) == ((262144, 640), GGMLType.Q8_0, 6527680, 178257920)
    assert g.tensors["blk.0.ffn_down.weight"].qtype == GGMLType.Q6_K
    assert g.tensors["blk.0.attn_q.weight"].shape == (1024, 640)
    assert {t.qtype.name for t in g.tensors.values()} == {"F32", "Q5_0", "Q4_K", "Q8_0", "Q6_K"}
    assert g.tensor_data("blk.0.attn_norm.weight").view(np.float32).shape == (640,)
    g.close()


def test_random_byte_corruption_gives_typed_errors_only(tmp_path):
    """Flip random header bytes of a small model: every outcome is a clean open or a typed one-liner."""
    src = tiny_llama(tmp_path / "m.gguf", n_layer=1, n_vocab=16)
    data = src.read_bytes()
    with GGUFFile.open(src, read_data=False) as g:
        header_end = g.data_offset
    rng = np.random.default_rng(7)
    path = tmp_path / "bad.gguf"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        buf = bytearray(data)
        for at in rng.integers(4, header_end, size=rng.integers(1, 4)):
            buf[at] = rng.integers(0, 256)
        path.write_bytes(bytes(buf))
        try:
            GGUFFile.open(path).close()
            outcomes["ok"] += 1
        except (BadModelFile, UnsupportedModel) as e:
            assert "\n" not in str(e) and str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 50 and sum(outcomes.values()) == 400
