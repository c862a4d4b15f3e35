"""Tokenizers built from GGUF metadata, token-exact with llama.cpp.

    tok = load_tokenizer(GGUFFile.open(path, read_data=False))
    ids = tok.encode("Hello", add_special=True)

"llama" vocabularies (SentencePiece, e.g. Gemma) run llama.cpp's score-ordered merge in spm.py;
"gpt2" vocabularies (byte-level BPE, e.g. SmolLM2) run HF tokenizers with llama.cpp's
pre-tokenizer regexes (bpe.py). Special-token text is split out first, as llama.cpp does (vocab.py).
"""
from __future__ import annotations

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


def tokenizer_from_metadata(meta: dict[str, Any]) -> Tokenizer:
    from engine.tokenizer.vocab import load_vocab

    model = meta.get("tokenizer.ggml.model")
    if model == "llama":
        from engine.tokenizer.spm import SPMEncoder
        vocab = load_vocab(meta)
        return Tokenizer(vocab, SPMEncoder(vocab.token_to_id, vocab.scores), clean_spaces=False)
    if model == "gpt2":
        from engine.tokenizer.bpe import BPEEncoder, pre_tokenizer_for
        pre = pre_tokenizer_for(str(meta.get("tokenizer.ggml.pre") or "default"))
        merges = meta.get("tokenizer.ggml.merges")
        if not isinstance(merges, (list, StringArray)):
            raise BadModelFile("GGUF BPE vocabulary has no tokenizer.ggml.merges; re-convert the model")
        vocab = load_vocab(meta, bpe_add_bos=pre.add_bos)
        enc = BPEEncoder(vocab.token_to_id, merges, pre)
        vocab.index = None      # the encoder holds its own map; token_to_id rebuilds one if asked
        return Tokenizer(vocab, enc, clean_spaces=pre.clean_spaces)
    if model is None:
        raise BadModelFile("GGUF has no tokenizer (tokenizer.ggml.model is missing); re-convert the model "
                           "with its tokenizer")
    raise UnsupportedModel(f"tokenizer type {model!r} is not supported (supported: llama/SentencePiece, "
                           "gpt2/byte-level BPE)")
