"""Incremental detokenization for streaming output: never emits half a UTF-8 character."""
from __future__ import annotations

import codecs
from typing import Callable


class StreamDecoder:
    """push(id) returns the text completed by that token (possibly ""), holding back the bytes of a
    character split across tokens; flush() returns what is left (an incomplete tail becomes U+FFFD)."""

    def __init__(self, piece: Callable[[int], bytes]):
        self._piece = piece
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(self._piece(token_id))

    def flush(self) -> str:
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out
