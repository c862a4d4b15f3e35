"""The tokenizer in C (native/src/vocab.c, bpe.c, spm.c; engine/tokenizer/native.py): the same ids as HF
tokenizers' BPE on SmolLM2's vocabulary and as Python's SentencePiece loop on Gemma-3's for any text, on
random merge tables, the rules it must keep on small vocabularies, and bad vocabularies."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine import kernels
from engine.errors import BadModelFile
from engine.gguf import GGUFFile
from engine.gguf_strings import StringArray
from engine.tokenizer import tokenizer_from_metadata
from engine.tokenizer.bpe import BPEEncoder, pre_tokenizer_for
from engine.tokenizer.spm import SPMEncoder
from engine.tokenizer.native import NativeBPEEncoder, NativeSPMEncoder, VocabTable
from engine.tokenizer.token_keys import vocab_index

pytestmark = pytest.mark.skipif(kernels.vocab_library() is None, reason="the native library is not built")


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_path):
    meta = GGUFFile.open(smollm2_path, read_data=False).metadata
    pre = pre_tokenizer_for(meta["tokenizer.ggml.pre"])
    native = NativeBPEEncoder.build(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"], pre)
    _, index = vocab_index(meta, as_bytes=False)
    return native, BPEEncoder(index, meta["tokenizer.ggml.merges"], pre)


TEXT = st.lists(st.sampled_from(list("aeZ09 \n\t.,'!?-_()<>") + ["é", "漢", "字", "🙂", "\u0301", "Ġ", "Ä", "\x00",
                                                                "\r", "ſ", "ß", "ﬁ", "'re", "'S", "   ", "the",
                                                                " and", "ing", "1234"]),
                max_size=40).map("".join) | st.text(max_size=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TEXT)
def test_same_ids_as_hf_tokenizers(smollm2_pair, text):
    native, hf = smollm2_pair
    assert native.encode(text) == hf.encode(text)


def test_same_ids_on_a_long_document_and_the_same_token_lookups(smollm2_pair):
    native, hf = smollm2_pair
    text = open(__file__, encoding="utf-8").read() * 3 + "日本語のテキストです。😀 " * 50
    assert native.encode(text) == hf.encode(text)
    for piece in ("Hello", "Ġthe", "<|im_start|>", "", "no such token at all", "Ċ"):
        assert native.token_id(piece) == hf.token_id(piece), piece


def _meta(tokens, merges, pre="gpt-2"):
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": StringArray.from_strings(tokens),
            "tokenizer.ggml.merges": StringArray.from_strings(merges)}


def test_lowest_rank_first_then_leftmost():
    toks = ["a", "b", "c", "ab", "bc", "aa", "aaa"]
    tok = tokenizer_from_metadata(_meta(toks, ["b c", "a b", "a a", "aa a"]))
    assert isinstance(tok._enc, NativeBPEEncoder)
    assert tok.encode("abc") == [0, 4]               # "b c" ranks first: a + bc, not ab + c
    assert tok.encode("aaaa") == [5, 5]             # "a a" at the left first, twice; "aa a" never meets
    assert tok.encode("aaa") == [6]                 # aa + a


def test_a_merge_listed_twice_keeps_its_first_rank_on_both_paths():
    """llama.cpp's bpe_ranks keeps the first rank of a pair (emplace); HF tokenizers alone keeps the last,
    so BPEEncoder gives it each pair once."""
    toks = ["a", "b", "c", "ab", "bc"]
    index = {t: i for i, t in enumerate(toks)}
    for merges, want in ((["a b", "b c", "a b"], [3, 2]), (["b c", "a b", "b c"], [0, 4])):
        meta = _meta(toks, merges)
        assert tokenizer_from_metadata(meta).encode("abc") == want
        assert BPEEncoder(index, meta["tokenizer.ggml.merges"], pre_tokenizer_for("gpt-2")).encode("abc") == want
        assert BPEEncoder(index, merges + ["zz b"], pre_tokenizer_for("gpt-2")).encode("abc") == want   # merge_pairs


def test_characters_outside_the_vocabulary_block_merges_and_are_dropped_as_llama_cpp_does():
    """llama.cpp keeps such a character as a symbol (no pair has it) and drops it at the end (HF
    tokenizers' BPE on its own drops it first, so that "axb" would merge to "ab": BPEEncoder makes it an
    unknown token outside the vocabulary and takes that out)."""
    toks = ["a", "b", "ab"]
    for native in (True, False):
        meta = _meta(toks, ["a b"])
        tok = tokenizer_from_metadata(meta) if native else None
        enc = tok._enc if native else BPEEncoder({t: i for i, t in enumerate(toks)}, meta["tokenizer.ggml.merges"],
                                                  pre_tokenizer_for("gpt-2"))
        assert isinstance(enc, NativeBPEEncoder if native else BPEEncoder)
        assert enc.encode("axb") == [0, 1] and enc.encode("ab") == [2] and enc.encode("xabx") == [2]
        assert enc.encode("x") == [] and enc.token_id("x") is None


def test_ignore_merges_takes_a_whole_token():
    """llama-3's pre-tokenizers: a piece that is a token is taken whole, though no merge chain makes it."""
    toks = ["h", "e", "l", "o", "hello", "he"]
    tok = tokenizer_from_metadata(_meta(toks, ["h e"], pre="llama3"))
    assert tok.encode("hello") == [4]
    tok = tokenizer_from_metadata(_meta(toks, ["h e"], pre="gpt-2"))
    assert tok.encode("hello") == [5, 2, 2, 3]


def test_a_token_listed_twice_is_a_bad_model_file():
    with pytest.raises(BadModelFile, match=r"duplicate tokens \(token 2, b'a'"):
        tokenizer_from_metadata(_meta(["a", "b", "a"], ["a b"]))


def test_a_vocabulary_with_an_empty_token_takes_hf_tokenizers():
    tok = tokenizer_from_metadata(_meta(["a", "", "b", "ab"], ["a b"]))
    assert isinstance(tok._enc, BPEEncoder) and tok.encode("ab") == [3]


def test_merges_that_are_no_pair_are_skipped():
    toks = ["a", "b", "ab"]
    for merges in (["ab"], ["a"], [""], ["a b c"], ["x y", "a b"]):
        tok = tokenizer_from_metadata(_meta(toks, merges))
        assert tok.encode("ab") == ([2] if "a b" in merges else [0, 1]), merges


ALPHABET = ["a", "b", "c", "é", "漢", "🙂", "Ġ"]


@st.composite
def vocab_and_merges(draw):
    """A vocabulary of the alphabet's characters and some joins of them, and merges over its tokens
    (some naming no token, some listed twice), in a random order of ranks."""
    toks = list(ALPHABET)
    for _ in range(draw(st.integers(0, 25))):
        t = draw(st.sampled_from(toks)) + draw(st.sampled_from(toks))
        if t not in toks:
            toks.append(t)
    merges = [f"{draw(st.sampled_from(toks + ['zz']))} {draw(st.sampled_from(toks))}"
              for _ in range(draw(st.integers(0, 40)))]
    return toks, merges


@settings(max_examples=300, deadline=None)
@given(vocab_and_merges(), st.lists(st.sampled_from(ALPHABET + ["x", " "]), max_size=30).map("".join))
def test_random_merge_tables_give_hf_tokenizers_ids(vm, text):
    """The merge order on tables unlike any real one: the C merge and HF's agree token for token."""
    toks, merges = vm
    meta = _meta(toks, merges)
    native = NativeBPEEncoder.build(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"],
                                    pre_tokenizer_for("gpt-2"))
    hf = BPEEncoder({t: i for i, t in enumerate(toks)}, meta["tokenizer.ggml.merges"], pre_tokenizer_for("gpt-2"))
    got = native.encode(text)
    assert got == hf.encode(text)
    assert all(0 <= i < len(toks) for i in got)


def test_a_merge_that_makes_hf_tokenizers_panic_is_dropped_on_both_paths():
    """tokenizers 0.23 panics (PanicException, not an Exception) building a BPE with the merge
    'c🙂 é漢漢漢' whose join is no token; the HF path drops it as it drops any such merge."""
    toks = ["c", "🙂", "é", "漢", "c🙂", "é漢", "é漢漢", "é漢漢漢", "a", "b", "ab"]
    meta = _meta(toks, ["c 🙂", "c🙂 é漢漢漢", "é 漢", "é漢 漢", "a b"])
    native = tokenizer_from_metadata(meta)
    hf = BPEEncoder({t: i for i, t in enumerate(toks)}, meta["tokenizer.ggml.merges"], pre_tokenizer_for("gpt-2"))
    assert native.encode("abc") == hf.encode("abc") == [10, 0]


# ---- SentencePiece -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma3_pair(gemma3_path):
    """Gemma-3's tokenizer with the merges in C, and with Python's loop (spm.SPMEncoder)."""
    meta = GGUFFile.open(gemma3_path, read_data=False).metadata
    native = tokenizer_from_metadata(meta)
    mp = pytest.MonkeyPatch()
    mp.setattr(VocabTable, "build", classmethod(lambda cls, *a: None))
    try:
        python = tokenizer_from_metadata(meta)
    finally:
        mp.undo()
    assert isinstance(native._enc, NativeSPMEncoder) and isinstance(python._enc, SPMEncoder)
    return native, python


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TEXT)
def test_spm_same_ids_as_the_python_loop(gemma3_pair, text):
    native, python = gemma3_pair
    assert native.encode(text, parse_special=False) == python.encode(text, parse_special=False)
    assert native.encode(text, add_special=True) == python.encode(text, add_special=True)


def test_spm_same_ids_on_a_long_document(gemma3_pair):
    native, python = gemma3_pair
    text = open(__file__, encoding="utf-8").read() * 2 + " 日本語のテキストです。😀\ud800x " * 40
    assert native.encode(text) == python.encode(text)


def _spm_meta(tokens, scores, types=None):
    n = len(tokens)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": StringArray.from_strings(tokens),
            "tokenizer.ggml.scores": np.asarray(scores, dtype=np.float32),
            "tokenizer.ggml.token_type": np.asarray(types or [1] * n, dtype=np.int32),
            "tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.bos_token_id": 0,
            "tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.unknown_token_id": 0}


def test_spm_highest_score_first_then_leftmost_then_bytes():
    toks = ["<unk>", "a", "b", "ab", "bb", "abb"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0, -1, -1, -3, -2, -1] + [-10] * 256
    types = [2, 1, 1, 1, 1, 1] + [6] * 256
    for build in ("native", "python"):
        mp = pytest.MonkeyPatch()
        if build == "python":
            mp.setattr(VocabTable, "build", classmethod(lambda cls, *a: None))
        try:
            tok = tokenizer_from_metadata(_spm_meta(toks, scores, types))
        finally:
            mp.undo()
        assert isinstance(tok._enc, NativeSPMEncoder if build == "native" else SPMEncoder)
        assert tok.encode("abb") == [5], build             # "bb" (-2) before "ab" (-3), then "a"+"bb"
        assert tok.encode("bbb") == [4, 2], build          # ties: the leftmost pair first
        e_acute = [6 + 0xC3, 6 + 0xA9]
        assert tok.encode("aé") == [1] + e_acute, build    # no token: its UTF-8 bytes' tokens


def test_spm_nan_scores_take_the_python_loop():
    toks = ["<unk>", "a", "b", "ab"]
    tok = tokenizer_from_metadata(_spm_meta(toks, [0, -1, float("nan"), -1]))
    assert isinstance(tok._enc, SPMEncoder) and tok.encode("ab") == [3]
