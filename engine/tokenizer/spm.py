"""SentencePiece-style tokenization (GGUF tokenizer.ggml.model == "llama"), as llama.cpp's
llm_tokenizer_spm_session does it: start from single characters, repeatedly merge the adjacent pair
whose concatenation is the highest-scoring vocabulary token (leftmost on ties), and spell anything
left outside the vocabulary as <0xXX> byte tokens."""
from __future__ import annotations

from array import array
from heapq import heapify, heappop, heappush

import numpy as np

SPACE = "\u2581"   # ▁, SentencePiece's escaped space


class SPMEncoder:
    def __init__(self, token_to_id: dict[str, int], scores):
        self._ids = token_to_id
        # negated scores, 4 bytes a token (a list of Python floats took 32): exact, they are float32
        self._neg = array("f", (-np.asarray(scores, dtype=np.float32)).tobytes())
        self._bytes = [self._byte_token(b) for b in range(256)]

    def _byte_token(self, b: int) -> int | None:
        t = self._ids.get(f"<0x{b:02X}>")
        return t if t is not None else self._ids.get(chr(b)) if b < 128 else None

    def encode(self, text: str) -> list[int]:
        """Text whose spaces are already escaped to ▁ -> ids."""
        n = len(text)
        if n == 0:
            return []
        get, neg = self._ids.get, self._neg
        length = [1] * n                       # symbol i spans text[i:i+length[i]]; 0 = merged away
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap = []
        for i in range(n - 1):
            t = get(text[i:i + 2])
            if t is not None:
                heap.append((neg[t], i, i + 1, 2))
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
                t = get(text[before:left + size])
                if t is not None:
                    heappush(heap, (neg[t], before, left, left + size - before))
            if after >= 0:
                t = get(text[left:after + length[after]])
                if t is not None:
                    heappush(heap, (neg[t], left, after, size + length[after]))
        out: list[int] = []
        i = 0
        while i != -1:
            piece = text[i:i + length[i]]
            t = get(piece)
            if t is not None:
                out.append(t)
            else:                               # only single characters can miss: merges make tokens
                for b in piece.encode("utf-8", "surrogatepass"):
                    bt = self._bytes[b]
                    if bt is not None:
                        out.append(bt)
            i = nxt[i]
        return out
