"""The tokenizer's merges in C (native/src/vocab.c, bpe.c, spm.c): llama.cpp's tokens, as the Python and
HF tokenizers paths give them (bpe.BPEEncoder, made to follow llama.cpp where HF alone would not, and
spm.SPMEncoder), built from the GGUF's string arrays in a few ms.

- Byte-level BPE: the whole tokenizer builds in 11-15 ms on SmolLM2's 49152 tokens and 48900 merges,
  against 64-119 ms through HF tokenizers' BPE (fresh processes, 2-core EPYC). HF tokenizers still splits
  the text (llama.cpp's pre-tokenizer regexes, then GPT-2's byte-to-character map; its pre-tokenizer
  alone builds in under 1 ms): the pieces go to C in one buffer, 0-separated, and come back as ids.
- SentencePiece: the table replaces a Python dict of 262144 byte strings (Gemma-3) and the merge loop
  runs in C instead of Python.

Used where the library has it and the vocabulary is StringArrays without empty tokens; elsewhere the
Python paths run.
"""
from __future__ import annotations

import ctypes

import numpy as np

from engine import kernels
from engine.errors import BadModelFile
from engine.gguf_strings import StringArray
from engine.tokenizer.bpe import PreTokenizer, pre_tokenizer
from engine.tokenizer.spm import byte_tokens


class VocabTable:
    """Token text -> id (and a BPE's merges) in C; freed on close or collection."""

    def __init__(self, lib, handle: int):
        self._lib, self._h = lib, handle

    @classmethod
    def build(cls, tokens, merges=None) -> "VocabTable | None":
        """The table, or None where it does not apply (no library, not StringArrays, an empty token);
        BadModelFile for a token listed twice."""
        lib = kernels.vocab_library()
        if lib is None or not isinstance(tokens, StringArray) or not (merges is None or isinstance(merges, StringArray)):
            return None
        if not len(tokens) or np.any(tokens.lengths() <= 0):
            return None
        tb, to = tokens.blob_and_offsets()
        mb, mo = merges.blob_and_offsets() if merges is not None else (b"", np.zeros(1, dtype=np.int64))
        err = ctypes.c_int64(0)
        h = lib.cellar_vocab_new(tb, to.ctypes.data, len(tokens), mb, mo.ctypes.data,
                                 len(merges) if merges is not None else 0, ctypes.byref(err))
        if not h:
            if err.value > 0:
                i = err.value - 1
                raise BadModelFile(f"GGUF vocabulary has duplicate tokens (token {i}, {tokens.raw(i)[:16]!r}, "
                                   f"repeats an earlier one); re-convert the model")
            raise MemoryError("no memory for the tokenizer's tables")
        return cls(lib, h)

    def token_id(self, text: str) -> int | None:
        b = text.encode("utf-8", "surrogateescape")
        i = self._lib.cellar_vocab_token_id(self._h, b, len(b))
        return None if i < 0 else int(i)

    def close(self) -> None:
        h, self._h = self._h, None
        if h:
            self._lib.cellar_vocab_free(h)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:       # noqa: BLE001 (interpreter shutdown)
            pass


class NativeBPEEncoder:
    """Raw text (no special tokens) -> ids, as BPEEncoder."""

    def __init__(self, table: VocabTable, pre: PreTokenizer):
        self._t = table
        self._ignore_merges = int(pre.ignore_merges)
        self._pre = pre_tokenizer(pre)
        self.token_id = table.token_id

    @classmethod
    def build(cls, tokens, merges, pre: PreTokenizer) -> "NativeBPEEncoder | None":
        """The encoder, or None where VocabTable.build gives none."""
        table = VocabTable.build(tokens, merges) if isinstance(merges, StringArray) else None
        return None if table is None else cls(table, pre)

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        buf = "\x00".join([p for p, _ in self._pre.pre_tokenize_str(text)]).encode()
        out = np.empty(len(buf) + 1, dtype=np.int32)
        n = self._t._lib.cellar_bpe_encode(self._t._h, buf, len(buf), self._ignore_merges, out.ctypes.data)
        if n < 0:
            raise MemoryError("no memory to tokenize the text")
        return out[:n].tolist()


class NativeSPMEncoder:
    """Text whose spaces are already escaped to ▁ -> ids, as spm.SPMEncoder."""

    def __init__(self, table: VocabTable):
        self._t = table
        self.token_id = table.token_id

    def set_scores(self, scores: np.ndarray) -> bool:
        """Give the merge order its scores (float32, one per token) and the bytes their fallback tokens
        (<0xXX>, or an ASCII byte itself); False where a score is NaN (spm.SPMEncoder's heap then decides)."""
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        if np.isnan(scores).any():
            return False
        found = byte_tokens(lambda text: self.token_id(text.decode()))
        byte_tok = np.array([-1 if t is None else t for t in found], dtype=np.int32)
        if self._t._lib.cellar_vocab_set_spm(self._t._h, scores.ctypes.data, byte_tok.ctypes.data) != 0:
            raise MemoryError("no memory for the tokenizer's scores")
        return True

    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8", "surrogatepass")
        if not data:
            return []
        out = np.empty(len(data), dtype=np.int32)
        n = self._t._lib.cellar_spm_encode(self._t._h, data, len(data), out.ctypes.data)
        if n < 0:
            raise MemoryError("no memory to tokenize the text")
        return out[:n].tolist()
