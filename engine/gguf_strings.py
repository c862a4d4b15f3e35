"""GGUF string arrays kept as the file's bytes: one blob and an offset table, decoded when asked.

A vocabulary (tokenizer.ggml.tokens, .merges) holds 50k-260k short strings; as Python str objects in a
list they cost 60-80 bytes each and most of a model's metadata parse time. Here the parse is one scan
for offsets, the array costs its bytes plus 4 a string, and elements are decoded one at a time (i) or
all at once (one decode of one joined buffer, then one split: C speed, not a Python loop).
"""
from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from typing import Iterator

import numpy as np

_U64 = struct.Struct("<Q")
_SEP = 0x00      # element separator in a joined buffer; any element holding it takes the one-by-one path


class StringArray(Sequence):
    """Element i is blob[offs[i] + 8 : offs[i + 1]] (each element in the file: u64 length, then bytes),
    decoded as UTF-8 with invalid bytes kept as surrogates (surrogateescape), as the reader always did."""

    __slots__ = ("_blob", "_offs")

    def __init__(self, blob: bytes, offs: np.ndarray):
        self._blob = blob
        self._offs = offs

    @classmethod
    def from_strings(cls, items) -> "StringArray":
        parts, offs, pos = [], [0], 0
        for s in items:
            b = s.encode("utf-8", "surrogateescape")
            parts += (_U64.pack(len(b)), b)
            pos += 8 + len(b)
            offs.append(pos)
        return cls(b"".join(parts), np.array(offs, dtype=np.int64))

    # ---- sequence --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._offs) - 1

    def raw(self, i: int) -> bytes:
        """Element i's bytes as in the file."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("StringArray index out of range")
        return self._blob[int(self._offs[i]) + 8:int(self._offs[i + 1])]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.strings()[i]
        return self.raw(i).decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        return iter(self.strings())

    def __eq__(self, other) -> bool:
        if isinstance(other, StringArray):
            return self._blob == other._blob
        if isinstance(other, (list, tuple)):
            return self.strings() == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings, {len(self._blob)} bytes)"

    @property
    def nbytes(self) -> int:
        return len(self._blob) + self._offs.nbytes

    def lengths(self) -> np.ndarray:
        """Each element's length in bytes (int64)."""
        return np.diff(self._offs.astype(np.int64)) - 8

    # ---- all at once -----------------------------------------------------------------------------
    def _joined(self, split_at_space: bool = False) -> bytes | None:
        """The elements' bytes joined by _SEP (with split_at_space, each element's first space at byte 1
        or later turned into _SEP too; None where an element lacks one). An element holding _SEP itself
        shows as extra parts after the split: the callers count them."""
        region = np.frombuffer(self._blob, dtype=np.uint8).copy()
        starts = self._offs[:-1].astype(np.int64)
        keep = np.ones(region.size, dtype=bool)
        for k in range(7):
            keep[starts + k] = False            # the length's first 7 bytes go, its last becomes _SEP
        if split_at_space:
            spaces = np.flatnonzero(region == 0x20)
            at = np.searchsorted(spaces, starts + 9)          # data starts at +8; index 1 or later
            if at.size and at[-1] >= spaces.size:
                return None
            first = spaces[at]
            if np.any(first >= self._offs[1:]):
                return None
            region[first] = _SEP
        region[starts + 7] = _SEP
        return region[keep].tobytes()[1:]

    def strings(self, errors: str = "surrogateescape") -> list[str]:
        """Every element decoded (errors: the UTF-8 decoder's handler; "strict" raises
        UnicodeDecodeError on the first invalid byte)."""
        if not len(self):
            return []
        joined = self._joined()
        if joined is not None:
            out = joined.decode("utf-8", errors).split("\x00")
            if len(out) == len(self):
                return out
        return [self.raw(i).decode("utf-8", errors) for i in range(len(self))]

    def raw_list(self, check_utf8: bool = False) -> list[bytes]:
        """Every element's bytes; check_utf8: raise UnicodeDecodeError unless all are valid UTF-8."""
        if not len(self):
            return []
        joined = self._joined()
        if joined is not None:
            out = joined.split(b"\x00")
            if len(out) == len(self):
                if check_utf8:
                    joined.decode("utf-8")
                return out
        out = [self.raw(i) for i in range(len(self))]
        if check_utf8:
            for b in out:
                b.decode("utf-8")
        return out

    def split_pairs(self) -> tuple[list[str], list[str]] | None:
        """Each element split at its first space at index 1 or later (a BPE merge "a b" -> "a", "b"), as
        two lists; None where some element has no such space (or holds a NUL)."""
        if not len(self):
            return [], []
        joined = self._joined(split_at_space=True)
        if joined is None:
            return None
        parts = joined.decode("utf-8", "surrogateescape").split("\x00")
        if len(parts) != 2 * len(self):
            return None
        return parts[0::2], parts[1::2]


def scan(buf, pos: int, n: int, size: int) -> tuple[array, int] | None:
    """Offsets of n length-prefixed strings from buf[pos]: (offs with n + 1 entries, end position), or
    None where one runs past `size` (the caller then finds which, for its message)."""
    unpack = _U64.unpack_from
    offs = array("q", bytes(8 * (n + 1)))
    try:
        for i in range(n):
            offs[i] = pos
            pos += 8 + unpack(buf, pos)[0]
        offs[n] = pos
    except (struct.error, OverflowError):
        return None
    return (offs, pos) if pos <= size else None


def string_array(buf, start: int, offs: array, end: int) -> StringArray:
    """The StringArray of buf[start:end] whose elements begin at the absolute offsets offs."""
    rel = np.frombuffer(offs, dtype=np.int64) - start
    small = end - start < 2**32
    return StringArray(bytes(buf[start:end]), rel.astype(np.uint32) if small else rel)
