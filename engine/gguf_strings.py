"""GGUF string arrays kept as bytes: one blob and an offset table, decoded when asked.

A vocabulary (tokenizer.ggml.tokens, .merges) holds 50k-260k short strings; as Python str objects in a
list they cost 60-80 bytes each and most of a model's metadata parse time. Here the parse is one scan
for offsets and one numpy pass that drops the 8-byte lengths; the array costs its bytes plus 5 a string,
and elements are decoded one at a time (i) or all at once (one decode of the blob, then one split: C
speed, not a Python loop).
"""
from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from typing import Iterator

import numpy as np

_U64 = struct.Struct("<Q")
_CHUNK = 1 << 20
_SEP = 0x00      # before each element in the blob; an element holding it takes the one-by-one paths


class StringArray(Sequence):
    """The elements' bytes, each after a _SEP byte: element i is blob[offs[i] + 1 : offs[i + 1]]; decoded
    as UTF-8 with invalid bytes kept as surrogates (surrogateescape), as the reader always did."""

    __slots__ = ("_blob", "_offs")

    def __init__(self, blob: bytes, offs: np.ndarray):
        self._blob = blob
        self._offs = offs

    @classmethod
    def from_strings(cls, items) -> "StringArray":
        data = [s.encode("utf-8", "surrogateescape") for s in items]
        offs = np.zeros(len(data) + 1, dtype=np.int64)
        np.cumsum([len(d) + 1 for d in data], out=offs[1:])
        return cls(b"".join(b"\x00" + d for d in data), offs)

    # ---- sequence --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._offs) - 1

    def raw(self, i: int) -> bytes:
        """Element i's bytes."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("StringArray index out of range")
        return self._blob[int(self._offs[i]) + 1:int(self._offs[i + 1])]

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

    def blob_and_offsets(self) -> tuple[bytes, np.ndarray]:
        """(the blob, the n + 1 offsets as contiguous int64): element i is blob[offs[i] + 1 : offs[i + 1]]
        (for C)."""
        return self._blob, np.ascontiguousarray(self._offs, dtype=np.int64)

    def lengths(self) -> np.ndarray:
        """Each element's length in bytes (int64)."""
        return np.diff(self._offs.astype(np.int64)) - 1

    # ---- all at once -----------------------------------------------------------------------------
    def _split_at_spaces(self) -> bytes | None:
        """The blob with each element's first space at byte 1 or later turned into _SEP; None where an
        element has none."""
        region = np.frombuffer(self._blob, dtype=np.uint8).copy()
        spaces = np.flatnonzero(region == 0x20)
        at = np.searchsorted(spaces, self._offs[:-1].astype(np.int64) + 2)   # data starts at +1
        if at.size and at[-1] >= spaces.size:
            return None
        first = spaces[at]
        if np.any(first >= self._offs[1:]):
            return None
        region[first] = _SEP
        return region.tobytes()

    def strings(self, errors: str = "surrogateescape") -> list[str]:
        """Every element decoded (errors: the UTF-8 decoder's handler; "strict" raises
        UnicodeDecodeError on the first invalid byte)."""
        if not len(self):
            return []
        out = self._blob.decode("utf-8", errors).split("\x00")       # an element holding _SEP
        if len(out) == len(self) + 1:                                  # makes more parts
            return out[1:]
        return [self.raw(i).decode("utf-8", errors) for i in range(len(self))]

    def raw_list(self, check_utf8: bool = False) -> list[bytes]:
        """Every element's bytes; check_utf8: raise UnicodeDecodeError unless all are valid UTF-8."""
        if not len(self):
            return []
        out = self._blob.split(b"\x00")
        if len(out) == len(self) + 1:
            if check_utf8:
                self._blob.decode("utf-8")
            return out[1:]
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
        joined = self._split_at_spaces()
        if joined is None:
            return None
        parts = joined.decode("utf-8", "surrogateescape").split("\x00")
        if len(parts) != 2 * len(self) + 1:
            return None
        return parts[1::2], parts[2::2]


def scan(buf, pos: int, n: int, size: int) -> tuple[np.ndarray, int] | None:
    """Offsets of n length-prefixed strings from buf[pos]: (int64 offsets, n + 1 of them, the last the end),
    or None where one runs past `size` (the caller then finds which, for its message)."""
    if n == 0:
        return np.array([pos], dtype=np.int64), pos
    found = _scan_short(buf, pos, n, size)
    if found is not None:
        return found
    unpack = _U64.unpack_from
    offs = array("q", bytes(8 * (n + 1)))
    try:
        for i in range(n):
            offs[i] = pos
            pos += 8 + unpack(buf, pos)[0]
        offs[n] = pos
    except (struct.error, OverflowError):
        return None
    return (np.frombuffer(offs, dtype=np.int64), pos) if pos <= size else None


def _scan_short(buf, pos: int, n: int, size: int) -> tuple[np.ndarray, int] | None:
    """scan's answer by numpy where every string is under 256 bytes (a vocabulary's are), else None.

    A length under 256 is 7 zero bytes after its first: every such place is a candidate (found 1 MiB at a
    time), and the first n are taken only if each one's length leads exactly to the next, the first is at
    pos and the last string ends inside the file. That proves they are the n lengths a one-by-one scan
    would read; anything else (a longer string, a zero run inside the text) fails it."""
    left = size - pos
    found: list[np.ndarray] = []
    count = at = expect = 0                         # expect: where the next length must be
    while count < n and at + 8 <= left:
        w = min(_CHUNK, left - at)                  # candidates at [at, at + w - 7) of the region
        region = np.frombuffer(buf, dtype=np.uint8, count=w, offset=pos + at)
        every = np.ndarray((w - 7,), dtype="<u8", buffer=region, strides=(1,))   # a u64 at each byte
        here = np.flatnonzero(every < 256)[:n - count]
        if here.size:
            nxt = here + (at + 8) + every[here].astype(np.int64)
            if here[0] + at != expect or np.any(nxt[:-1] != here[1:] + at):
                return None
            found.append(here + at)
            count += here.size
            expect = int(nxt[-1])
        at = max(at + w - 7, expect)                # nothing before `expect` can be a length
    if count < n or expect > left:
        return None
    return np.append(np.concatenate(found), expect) + pos, pos + expect


def string_array(buf, start: int, offs: np.ndarray, end: int) -> StringArray:
    """The StringArray of buf[start:end], whose n elements' lengths start at the absolute offsets offs[:n]:
    each 8-byte length becomes one _SEP byte (one numpy pass; 262144 strings in a few ms)."""
    n = len(offs) - 1
    starts = offs[:n] - start
    region = np.frombuffer(buf, dtype=np.uint8, count=end - start, offset=start)
    keep = np.ones(end - start, dtype=bool)
    for k in range(7):
        keep[starts + k] = False
    blob = region[keep]
    del region
    seps = starts - 7 * np.arange(n, dtype=np.int64)
    blob[seps] = _SEP
    new_offs = np.append(seps, blob.size)
    return StringArray(blob.tobytes(), new_offs.astype(np.uint32) if blob.size < 2**32 else new_offs)
