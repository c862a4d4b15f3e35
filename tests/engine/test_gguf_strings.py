"""StringArray (engine/gguf_strings.py): the one-pass decode and split say exactly what decoding each
element alone says, for any bytes (invalid UTF-8, NULs, spaces anywhere), and a string array that runs
past the end of the file is found."""
from __future__ import annotations

import random
import struct

import pytest

from engine.gguf_strings import StringArray, scan, string_array

_ALPHABET = [b"a", b" ", b"\x00", b"\xe2", b"\x82", b"\xac", b"\xf0\x9f\x98\x80", b"\xc3\xa9", b"\xff", b"\x80",
             b"z", b"\xed\xb3\xbf"]


def _file(items: list[bytes]) -> bytes:
    return b"xx" + b"".join(struct.pack("<Q", len(x)) + x for x in items) + b"tail"


def _merge_split(text: str) -> tuple[str, str] | None:
    i = text.find(" ", 1)
    return None if i < 0 else (text[:i], text[i + 1:])


@pytest.mark.parametrize("seed", range(4))
def test_one_pass_decode_and_split_equal_one_by_one(seed):
    rng = random.Random(seed)
    for _ in range(600):
        items = [b"".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 8))]
        buf = _file(items)
        offs, end = scan(buf, 2, len(items), len(buf))
        assert end == len(buf) - 4
        sa = string_array(buf, 2, offs, end)
        want = [x.decode("utf-8", "surrogateescape") for x in items]
        assert len(sa) == len(items) and sa.strings() == want and list(sa) == want and sa == want
        assert [sa[i] for i in range(len(items))] == want and [sa.raw(i) for i in range(len(items))] == items
        pairs = [_merge_split(t) for t in want]
        got = sa.split_pairs()
        if got is not None:
            assert list(zip(*got)) == pairs or (not items and got == ([], []))
        else:
            assert None in pairs or any("\x00" in t for t in want)


def test_strict_decode_raises_and_from_strings_round_trips():
    sa = StringArray.from_strings(["a", "\udcff", "b c"])
    assert sa.raw(1) == b"\xff" and sa.strings() == ["a", "\udcff", "b c"]
    with pytest.raises(UnicodeDecodeError):
        sa.strings("strict")
    assert sa.split_pairs() is None
    assert StringArray.from_strings(["a b", "cd e"]).split_pairs() == (["a", "cd"], ["b", "e"])


def test_a_string_past_the_end_is_not_scanned():
    buf = _file([b"abc", b"defg"])
    assert scan(buf, 2, 2, len(buf) - 6) is None                  # the last string ends past `size`
    assert scan(buf[:-7], 2, 2, len(buf) - 7) is None             # ... or past the buffer
    huge = b"xx" + struct.pack("<Q", 2**64 - 1) + b"abc"
    assert scan(huge, 2, 2, len(huge)) is None


def _scan_one_by_one(buf: bytes, pos: int, n: int) -> list[int]:
    offs = []
    for _ in range(n):
        offs.append(pos)
        pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
    return offs + [pos]


@pytest.mark.parametrize("chunk", [1 << 20, 8, 21])
@pytest.mark.parametrize("seed", range(3))
def test_the_numpy_scan_proves_its_offsets_or_steps_aside(seed, chunk, monkeypatch):
    """_scan_short answers only what the one-by-one scan answers: long strings (>= 255 bytes), zero runs in
    the text, empty strings and windows that end early make it step aside (None) or look further."""
    from engine import gguf_strings
    from engine.gguf_strings import _scan_short
    monkeypatch.setattr(gguf_strings, "_CHUNK", chunk)          # small chunks: strings across their ends
    rng = random.Random(seed)
    answered = 0
    for _ in range(400):
        n = rng.randint(1, 12)
        sizes = [rng.choice([0, 1, 3, 30, 200, 255, 256, 300]) if rng.random() < 0.3 else rng.randint(1, 20)
                 for _ in range(n)]
        items = [bytes(rng.choice(b"ab\x00 \xe2") if rng.random() < 0.2 else rng.randint(1, 255) for _ in range(k))
                 for k in sizes]
        buf = _file(items)
        want = _scan_one_by_one(buf, 2, n)
        got = _scan_short(buf, 2, n, len(buf))
        if got is not None:
            answered += 1
            assert got[0].tolist() == want and got[1] == want[-1]
        full = scan(buf, 2, n, len(buf))
        assert full[0].tolist() == want and full[1] == want[-1]
        assert scan(buf, 2, n, want[-1] - 1) is None                  # the last string ends past `size`
    assert answered > 50
