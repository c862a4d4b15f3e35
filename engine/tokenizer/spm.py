"""SentencePiece-style tokenization (GGUF tokenizer.ggml.model == "llama"), as llama.cpp's
llm_tokenizer_spm_session does it: start from single characters, repeatedly merge the adjacent pair
whose concatenation is the highest-scoring vocabulary token (leftmost on ties), and spell anything
left outside the vocabulary as <0xXX> byte tokens. The path without the native library (or with a NaN
score); native/src/spm.c orders its candidates exactly as this heap does."""
from __future__ import annotations

from array import array
from heapq import heapify, heappop, heappush
from typing import Callable

import numpy as np

SPACE = "\u2581"   # ▁, SentencePiece's escaped space


def byte_tokens(find: Callable[[bytes], int | None]) -> list[int | None]:
    """Each byte's fallback token, found by its text: <0xXX>, or for an ASCII byte the byte itself."""
    out: list[int | None] = []
    for b in range(256):
        t = find(f"<0x{b:02X}>".encode())
        out.append(t if t is not None else find(bytes((b,))) if b < 128 else None)
    return out


class SPMEncoder:
    def __init__(self, token_to_id: dict[bytes, int], scores):
        self._ids = token_to_id                 # keyed by UTF-8 bytes: half the memory of str keys
        # negated scores, 4 bytes a token (a list of Python floats took 32): exact, they are float32
        self._neg = array("f", (-np.asarray(scores, dtype=np.float32)).tobytes())
        self._bytes = byte_tokens(self._ids.get)

    def encode(self, text: str) -> list[int]:
        """Text whose spaces are already escaped to ▁ -> ids. Symbols are byte spans of its UTF-8 (one
        character each to start; a lone surrogate is its 3 surrogatepass bytes, which no token holds)."""
        data = text.encode("utf-8", "surrogatepass")
        n = len(data)
        if n == 0:
            return []
        get, neg = self._ids.get, self._neg
        if n == len(text):
            starts = list(range(n + 1))
        else:
            starts = [i for i, c in enumerate(data) if c & 0xC0 != 0x80]
            starts.append(n)
        m = len(starts) - 1
        length = [0] * n                        # symbol at byte i spans data[i:i+length[i]]; 0 = none
        prev = [-1] * n
        nxt = [-1] * n
        heap = []
        for k in range(m):
            i = starts[k]
            length[i] = starts[k + 1] - i
            if k:
                prev[i] = starts[k - 1]
            if k + 1 < m:
                nxt[i] = starts[k + 1]
                t = get(data[i:starts[k + 2]])
                if t is not None:
                    heap.append((neg[t], i, starts[k + 1], starts[k + 2] - i))
        heapify(heap)
        while heap:
            _, left, right, size = heappop(heap)
            ln, rn = length[left], length[right]
            if ln == 0 or rn == 0 or ln + rn != size:
                continue                        # stale: one side changed since this pair was queued
            length[left] = size
            length[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prev[after] = left
            before = prev[left]
            if before >= 0:
                t = get(data[before:left + size])
                if t is not None:
                    heappush(heap, (neg[t], before, left, left + size - before))
            if after >= 0:
                t = get(data[left:after + length[after]])
                if t is not None:
                    heappush(heap, (neg[t], left, after, size + length[after]))
        out: list[int] = []
        i = 0
        while i != -1:
            piece = data[i:i + length[i]]
            t = get(piece)
            if t is not None:
                out.append(t)
            else:                               # only single characters can miss: merges make tokens
                for b in piece:
                    bt = self._bytes[b]
                    if bt is not None:
                        out.append(bt)
            i = nxt[i]
        return out
