"""Tokenizer tests: token ids, pieces and detokenized bytes equal llama.cpp's for a fixed corpus on both
real vocabularies (reference data from tools/make_tokenizer_refs.py), plus streaming and small vocabularies."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.errors import BadModelFile, BadRequest, UnsupportedModel
from engine.gguf import GGUFFile
from engine.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_metadata
from engine.tokenizer.tokenizer import _clean_spaces

CORPUS = json.loads((Path(__file__).parents[1] / "data" / "tokenizer_corpus.json").read_text("utf-8"))
MODELS = ("smollm2", "gemma3")


@pytest.fixture(scope="module", params=["native", "python"])
def backend(request):
    """The merges in C (tokenizer/native.py) or, as where the library is not built, in HF tokenizers' BPE
    (bpe.BPEEncoder) and Python's SentencePiece loop (spm.SPMEncoder): every tokenizer test runs on both."""
    from engine import kernels
    from engine.tokenizer.native import VocabTable
    if request.param == "native" and kernels.vocab_library() is None:
        pytest.skip("the native library is not built")
    mp = pytest.MonkeyPatch()
    if request.param == "python":
        mp.setattr(VocabTable, "build", classmethod(lambda cls, *a: None))
    yield request.param
    mp.undo()


@pytest.fixture(scope="module")
def toks(smollm2_path, gemma3_path, backend) -> dict[str, Tokenizer]:
    out = {}
    for name, path in (("smollm2", smollm2_path), ("gemma3", gemma3_path)):
        g = GGUFFile.open(path, read_data=False)
        out[name] = load_tokenizer(g)
        g.close()
    return out


def test_corpus_covers_what_it_should():
    texts = [c["text"] for c in CORPUS["models"]["smollm2"]["cases"]]
    assert len(texts) >= 60
    assert texts == [c["text"] for c in CORPUS["models"]["gemma3"]["cases"]]
    for probe in ("", " ", "\t", "\n\n", "   leading spaces", "trailing spaces   ", "日本語のテキストです。",
                  "1234567890", "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"):
        assert probe in texts
    assert any("😀" in t for t in texts) and any("def " in t and "\n    " in t for t in texts)
    assert any("'re" in t for t in texts) and any("'RE" in t for t in texts)


@pytest.mark.parametrize("name", MODELS)
def test_encode_matches_llama_cpp(toks, name):
    tok = toks[name]
    wrong = [(c["text"], tok.encode(c["text"]), c["ids"]) for c in CORPUS["models"][name]["cases"]
             if tok.encode(c["text"]) != c["ids"]]
    assert wrong == []


@pytest.mark.parametrize("name", MODELS)
def test_add_special_and_parse_special_match_llama_cpp(toks, name):
    tok = toks[name]
    for c in CORPUS["models"][name]["special_cases"]:
        assert tok.encode(c["text"], add_special=True) == c["ids_add_special"], c["text"]
        assert tok.encode(c["text"], parse_special=False) == c["ids_no_parse"], c["text"]


@pytest.mark.parametrize("name", MODELS)
def test_special_ids_and_eog_match_llama_cpp(toks, name):
    tok, ref = toks[name], CORPUS["models"][name]
    assert (tok.n_vocab, tok.bos_id, tok.eos_id) == (ref["n_vocab"], ref["bos_id"], ref["eos_id"])
    assert (tok.add_bos, tok.add_eos) == (ref["add_bos"], ref["add_eos"])
    assert sorted(tok.eog_ids) == ref["eog_ids"]
    assert all(tok.is_eog(i) for i in ref["eog_ids"]) and not tok.is_eog(tok.bos_id)


def test_eog_includes_turn_end_tokens(toks):
    s, g = toks["smollm2"], toks["gemma3"]
    assert s.is_eog(s.encode("<|im_end|>")[0]) and s.is_eog(s.encode("<|endoftext|>")[0])
    assert g.is_eog(g.encode("<end_of_turn>")[0]) and g.is_eog(g.eos_id)


@pytest.mark.parametrize("name", MODELS)
def test_token_to_piece_matches_llama_cpp(toks, name):
    tok = toks[name]
    pieces = CORPUS["models"][name]["pieces"]
    assert len(pieces) > 1000
    wrong = [(i, tok.token_to_piece(int(i)), h) for i, h in pieces.items() if tok.token_to_piece(int(i)).hex() != h]
    assert wrong == []


@pytest.mark.parametrize("name", MODELS)
def test_detokenize_matches_llama_cpp(toks, name):
    tok = toks[name]
    for c in CORPUS["models"][name]["cases"]:
        assert tok.decode_bytes(c["ids"]).hex() == c["detok_hex"], c["text"]
        assert tok.decode_bytes(c["ids"], skip_special=True).hex() == c["detok_skip_hex"], c["text"]


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_where_llama_cpp_round_trips(toks, name):
    tok = toks[name]
    cases = [c for c in CORPUS["models"][name]["cases"] if bytes.fromhex(c["detok_hex"]) == c["text"].encode()]
    assert len(cases) >= 60
    assert [c["text"] for c in cases if tok.decode(tok.encode(c["text"])) != c["text"]] == []


def test_pieces_for_display(toks):
    s = toks["smollm2"]
    assert s.pieces(s.encode("Hello world")) == ["Hello", " world"]
    assert s.pieces(s.encode("<|im_start|>")) == ["<|im_start|>"]
    g = toks["gemma3"]
    assert g.pieces(g.encode("Hello world", add_special=True)) == ["<bos>", "Hello", " world"]
    assert g.decode(g.encode("Hello world", add_special=True), skip_special=True) == "Hello world"


def test_stream_decoder_holds_split_characters(toks):
    s = toks["smollm2"]
    ids = s.encode("😀")
    assert len(ids) == 3                            # one emoji, three byte-level tokens
    d = s.stream_decoder()
    assert [d.push(i) for i in ids] == ["", "", "😀"]
    assert d.flush() == ""
    g = toks["gemma3"]
    byte_ids = [g.vocab.token_to_id[f"<0x{b:02X}>"] for b in "語x".encode()]
    d = g.stream_decoder()
    assert [d.push(i) for i in byte_ids] == ["", "", "語", "x"]
    d.push(byte_ids[0])
    assert d.flush() == "\ufffd"                    # an unfinished character at the end


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab \n\t日本語😀🏽é\u0301,'")), max_size=40))
def test_stream_pushes_join_to_decode(toks, text):
    for tok in toks.values():
        ids = tok.encode(text)
        d = tok.stream_decoder()
        parts = [d.push(i) for i in ids]
        assert "".join(parts) + d.flush() == tok.decode(ids) == text
        assert all("\ufffd" not in p for p in parts)


def test_gemma_vocabulary_builds_fast(gemma3_path):
    g = GGUFFile.open(gemma3_path, read_data=False)
    t0 = time.perf_counter()
    tok = load_tokenizer(g)
    built = time.perf_counter() - t0
    assert tok.n_vocab == 262144
    assert built < 1.5, f"building Gemma's tokenizer took {built:.2f} s"


def test_out_of_range_token_is_a_typed_error(toks):
    with pytest.raises(BadRequest, match="outside the vocabulary"):
        toks["smollm2"].token_to_piece(10**6)


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_text_that_was_not_utf8_encodes_as_replacement_characters(toks, name):
    """Bytes that are not UTF-8 reach encode as lone surrogates (argv, file names: surrogateescape; a
    JSON string's unpaired escape): one U+FFFD per invalid byte, as llama.cpp's UTF-8 decoder gives."""
    t = toks[name]
    assert t.encode("a\udcffb") == t.encode("a\ufffdb")
    assert t.encode("a\ud800b") == t.encode("a\ufffd\ufffd\ufffdb")       # surrogatepass: 3 invalid bytes
    assert t.encode("plain text") == t.encode("plain text".encode().decode("utf-8", "surrogateescape"))


# -- small in-memory vocabularies: paths the two real models do not take ---------------------------
def _spm_meta(**extra) -> dict:
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "a", "b", "▁a", "ab", "▁ab"]
    types = [2, 3, 3] + [6] * 256 + [1] * 6
    scores = [0.0] * 259 + [-1.0, -2.0, -2.0, -1.5, -1.2, -0.5]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": toks,
            "tokenizer.ggml.scores": np.array(scores, np.float32),
            "tokenizer.ggml.token_type": np.array(types, np.int32)}
    meta.update(extra)
    return meta


def test_spm_space_prefix_and_byte_fallback():
    tok = tokenizer_from_metadata(_spm_meta())     # llama.cpp's SPM defaults: BOS, space prefix
    ab, a_sp, byte_c = tok.vocab.token_to_id["▁ab"], tok.vocab.token_to_id["▁a"], 3 + ord("c")
    assert tok.add_bos and tok.bos_id == 1 and tok.eos_id == 2
    assert tok.encode("ab", add_special=True) == [1, ab]
    assert tok.encode("a c") == [a_sp, tok.vocab.token_to_id["▁"], byte_c]
    assert tok.decode(tok.encode("ab a")) == "ab a"            # the prefix space is removed again
    assert tok.encode("</s>ab") == [2, ab]                        # space prefix after a special token
    no_prefix = tokenizer_from_metadata(_spm_meta(**{"tokenizer.ggml.add_space_prefix": False}))
    assert no_prefix.encode("ab") == [tok.vocab.token_to_id["ab"]]


def test_bad_tokenizer_metadata_is_typed():
    with pytest.raises(UnsupportedModel, match="tokenizer type"):
        tokenizer_from_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(BadModelFile, match="tokenizer.ggml.model"):
        tokenizer_from_metadata({})
    with pytest.raises(BadModelFile, match="tokenizer.ggml.tokens"):
        tokenizer_from_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(UnsupportedModel, match="pre-tokenizer"):
        tokenizer_from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such",
                                 "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []})
    with pytest.raises(BadModelFile, match="duplicate"):
        tokenizer_from_metadata(_spm_meta(**{"tokenizer.ggml.tokens": ["a", "a"] + ["x"] * 263}))


def test_clean_spaces_pass():
    assert _clean_spaces(b"Hello , world ! it 's what we 've got ' ok") == b"Hello, world! it's what we've got'ok"
    assert _clean_spaces(b"") == b""


@pytest.mark.parametrize("pre", sorted(CORPUS["smollm2_pre_variants"]))
def test_other_bpe_pre_tokenizers_match_llama_cpp(smollm2_path, pre, backend):
    """SmolLM2's vocabulary under each other pre-tokenizer (llama3 digit triples, qwen2, gpt-2, ...)."""
    meta = dict(GGUFFile.open(smollm2_path, read_data=False).metadata, **{"tokenizer.ggml.pre": pre})
    tok = tokenizer_from_metadata(meta)
    texts = [c["text"] for c in CORPUS["models"]["smollm2"]["cases"]]
    ref = CORPUS["smollm2_pre_variants"][pre]
    assert [(t, r) for t, r in zip(texts, ref) if tok.encode(t) != r] == []


def test_bpe_merges_outside_the_vocabulary_are_dropped_from_a_string_array(backend):
    """Merges as the reader gives them (a StringArray): one naming a token outside the vocabulary, or
    whose join is not a token, sends the list through the one-by-one filter (HF tokenizers refuses it)."""
    from engine.gguf_strings import StringArray
    toks = ["a", "b", "c", "ab", "abc", "<|endoftext|>"]
    for merges in (["a b", "ab c"], ["a b", "b c", "ab c"], ["a b", "x y", "ab c"], ["a b", "abc", "ab c"]):
        meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                "tokenizer.ggml.tokens": StringArray.from_strings(toks),
                "tokenizer.ggml.merges": StringArray.from_strings(merges)}
        tok = tokenizer_from_metadata(meta)
        assert tok.encode("abc") == [4] and tok.encode("bc") == [1, 2], merges
        assert tok.vocab.token_to_id["ab"] == 3 and 5 in tok.eog_ids


def test_a_byte_outside_the_vocabulary_merges_with_nothing_as_llama_cpp(toks):
    """SmolLM2's vocabulary has no token for byte 0x06 ("Ć" in GPT-2's map). llama.cpp keeps it in the
    word, where no merge takes it, and drops it at the end: "/\x06<" is "/", "<" (llama-cpp-python 0.3.36,
    the shared peer, 2026-12-07), not the merged "/<" (31194) HF tokenizers' BPE gives when it drops the
    byte first."""
    tok = toks["smollm2"]
    assert tok.encode("/\x06<") == [31, 44]
    assert tok.encode("a\x06b") == [81, 82] and tok.encode("\x06") == []
    assert tok.encode("ab\x07cd") == [369, 195, 13133]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_build_leaves_the_cyclic_collector_as_it_was(enabled):
    import gc
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        tokenizer_from_metadata(_spm_meta())
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", "b", "<", "|", "\x00", "\U0010ffff", "\ud800", "😀", "日"]), max_size=20))
def test_special_token_prefilter_keys_every_substring_of_up_to_3_characters(text):
    """vocab.partition looks for a special token only where its first 1-3 characters occur in the text: the
    numpy keys must be exactly those of every substring of 1, 2 and 3 characters (else a special token
    would go unsplit)."""
    from engine.tokenizer.vocab import _heads, _key
    assert _heads(text) == {_key(text[i:i + k]) for k in (1, 2, 3) for i in range(len(text) - k + 1)}
