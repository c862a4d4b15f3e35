"""A vocabulary's token texts as map keys, in id order: str (what HF tokenizers' BPE takes) or UTF-8
bytes (the SPM merge's map: a '▁'-prefixed piece costs ~40 bytes as bytes against ~90 as str, 9 MiB over
Gemma-3's 262144 tokens). Checked to be valid UTF-8; empty tokens get llama.cpp's [EMPTY_i] names."""
from __future__ import annotations

from typing import Any, Sequence

from engine.errors import BadModelFile
from engine.gguf_strings import StringArray


def vocab_index(meta: dict[str, Any], as_bytes: bool) -> tuple[Sequence[str], dict]:
    """(token texts, text -> id map keyed by str or UTF-8 bytes) of tokenizer.ggml.tokens, checked: present,
    valid UTF-8, no duplicates."""
    raw = meta.get("tokenizer.ggml.tokens")
    if not isinstance(raw, (list, StringArray)) or not len(raw):
        raise BadModelFile("GGUF has no tokenizer.ggml.tokens vocabulary; re-convert the model with its tokenizer")
    n = len(raw)
    texts, keys = token_keys(raw, as_bytes)
    index = dict(zip(keys, range(n)))
    if len(index) != n:
        raise BadModelFile(f"GGUF vocabulary has {n - len(index)} duplicate tokens; re-convert the model")
    return texts, index


def checked_texts(raw: StringArray) -> StringArray:
    """The token texts of a StringArray with no empty token (the native tables hold the keys), checked to
    be UTF-8 in one decode of its bytes."""
    try:
        raw.blob_and_offsets()[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(raw) from None
    return raw


def token_keys(raw: Any, as_bytes: bool) -> tuple[Sequence[str], list]:
    """(the token texts, id -> str; the keys, id -> str or bytes) of tokenizer.ggml.tokens. A StringArray
    stays the texts (decoded when asked); its keys come from one pass over its bytes."""
    if isinstance(raw, StringArray):
        texts: Sequence[str] = raw
        if as_bytes:
            try:
                keys = raw.raw_list(check_utf8=True)
            except UnicodeDecodeError:
                raise _not_utf8(raw) from None
        else:
            try:
                keys = raw.strings("strict")
            except UnicodeDecodeError:
                raise _not_utf8(raw) from None
    else:
        if not all(isinstance(t, str) for t in raw):
            raise BadModelFile("GGUF tokenizer.ggml.tokens holds something other than strings; the vocabulary "
                               "is corrupt")
        texts = list(raw)
        try:
            "".join(texts).encode("utf-8")
        except UnicodeEncodeError:      # the reader keeps invalid UTF-8 as surrogates
            raise _not_utf8(texts) from None
        keys = [t.encode() for t in texts] if as_bytes else texts
    if not all(keys):
        texts = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(texts)]
        keys = [t.encode() for t in texts] if as_bytes else texts
    return texts, keys


def _not_utf8(texts: Sequence[str]) -> BadModelFile:
    def raw(i: int) -> bytes:
        return texts.raw(i) if isinstance(texts, StringArray) else texts[i].encode("utf-8", "surrogateescape")

    def ok(i: int) -> bool:
        try:
            raw(i).decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    bad = next(i for i in range(len(texts)) if not ok(i))
    return BadModelFile(f"GGUF token {bad} is not valid UTF-8 ({raw(bad)[:16]!r}); the vocabulary is corrupt")
