"""Tokenizers built from GGUF metadata, token-exact with llama.cpp.

    tok = load_tokenizer(GGUFFile.open(path, read_data=False))
    ids = tok.encode("Hello", add_special=True)

"llama" vocabularies (SentencePiece, e.g. Gemma) run llama.cpp's score-ordered merge in C (native.py),
or in Python without the native library (spm.py); "gpt2" vocabularies (byte-level BPE, e.g. SmolLM2)
are split by HF tokenizers' pre-tokenizer with llama.cpp's regexes, then merged in C (native.py), or by
HF tokenizers' BPE without the native library (bpe.py). Special-token text is split out first, as
llama.cpp does (vocab.py).
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from engine.errors import BadModelFile, UnsupportedModel
from engine.gguf_strings import StringArray
from engine.tokenizer.stream import StreamDecoder
from engine.tokenizer.tokenizer import Tokenizer

if TYPE_CHECKING:
    from engine.gguf import GGUFFile

__all__ = ["Tokenizer", "StreamDecoder", "load_tokenizer", "tokenizer_from_metadata"]


def load_tokenizer(g: "GGUFFile") -> Tokenizer:
    return tokenizer_from_metadata(g.metadata)


@contextmanager
def _no_cyclic_gc():
    """The build makes ~50k tuples (BPE merge pairs): each 700 trip the cyclic collector, and with torch
    loaded a full collection walks ~1M unrelated objects, 40-60 ms of a 100 ms build. Nothing it makes
    is cyclic, so the collector waits, then its previous state (the app runs it by hand) comes back."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def tokenizer_from_metadata(meta: dict[str, Any]) -> Tokenizer:
    with _no_cyclic_gc():
        return _build(meta)


def _build(meta: dict[str, Any]) -> Tokenizer:
    from engine.tokenizer.native import NativeBPEEncoder, NativeSPMEncoder, VocabTable
    from engine.tokenizer.token_keys import checked_texts, vocab_index
    from engine.tokenizer.vocab import load_vocab

    model = meta.get("tokenizer.ggml.model")
    if model == "llama":
        from engine.tokenizer.spm import SPMEncoder
        # the table and the merges in C where the library has them, else a dict of byte strings in Python
        table = VocabTable.build(meta.get("tokenizer.ggml.tokens"))
        if table is not None:
            tokens = checked_texts(meta["tokenizer.ggml.tokens"])
            vocab = load_vocab(meta, tokens, table.token_id)
            enc = NativeSPMEncoder(table)
            if enc.set_scores(vocab.scores):
                return Tokenizer(vocab, enc, clean_spaces=False)
        tokens, index = vocab_index(meta, as_bytes=True)
        vocab = load_vocab(meta, tokens, lambda text: index.get(text.encode()))
        return Tokenizer(vocab, SPMEncoder(index, vocab.scores), clean_spaces=False)
    if model == "gpt2":
        from engine.tokenizer.bpe import BPEEncoder, pre_tokenizer_for
        pre = pre_tokenizer_for(str(meta.get("tokenizer.ggml.pre") or "default"))
        merges = meta.get("tokenizer.ggml.merges")
        if not isinstance(merges, (list, StringArray)):
            raise BadModelFile("GGUF BPE vocabulary has no tokenizer.ggml.merges; re-convert the model")
        # the merges in C where the library has them (a few ms), else in HF tokenizers (~30 ms to build)
        enc = NativeBPEEncoder.build(meta.get("tokenizer.ggml.tokens"), merges, pre)
        if enc is not None:
            tokens = checked_texts(meta["tokenizer.ggml.tokens"])
        else:
            # the encoder first: the str map and merge pairs it takes are gone before the vocabulary's
            # lasting objects are made (they would pin the allocator's arenas the transients filled)
            tokens, index = vocab_index(meta, as_bytes=False)
            enc = BPEEncoder(index, merges, pre)
            del index
        vocab = load_vocab(meta, tokens, enc.token_id, bpe_add_bos=pre.add_bos)
        return Tokenizer(vocab, enc, clean_spaces=pre.clean_spaces)
    if model is None:
        raise BadModelFile("GGUF has no tokenizer (tokenizer.ggml.model is missing); re-convert the model "
                           "with its tokenizer")
    raise UnsupportedModel(f"tokenizer type {model!r} is not supported (supported: llama/SentencePiece, "
                           "gpt2/byte-level BPE)")
