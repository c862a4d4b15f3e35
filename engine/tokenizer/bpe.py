"""Byte-level BPE (GGUF tokenizer.ggml.model == "gpt2") with llama.cpp's pre-tokenizer regexes.

Where the native library is built, the merges run in C (native.py); this module's BPEEncoder is
the path without it. Its merge loop and byte-level mapping run in HF `tokenizers` (Rust), built directly
from the GGUF vocabulary and merges: split by each of the pre-type's regexes in turn (llama.cpp applies them in
sequence, keeping the text between matches), map bytes to GPT-2's printable characters, then merge
by rank, lowest first, leftmost on ties -- the same order as llama.cpp's llm_tokenizer_bpe_session.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from tokenizers import Regex, Tokenizer, models, pre_tokenizers   # a library of the engine, loaded with it

from engine.errors import UnsupportedModel
from engine.oom import require_address_space
from engine.gguf_strings import StringArray

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False
    clean_spaces: bool = True


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_L3 = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_Q2 = PreTokenizer((_QWEN2,), clean_spaces=False)
_STARCODER = PreTokenizer((r"\p{N}", _GPT2))

# tokenizer.ggml.pre -> llama.cpp's regexes and flags (llama-vocab.cpp)
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                     "lfm2"), _L3),
    "dbrx": PreTokenizer((_LLAMA3,)), "smaug-bpe": PreTokenizer((_LLAMA3,)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _Q2),
    "stablelm2": PreTokenizer((_QWEN2,)),
    **dict.fromkeys(("starcoder", "refact", "codeshell", "exaone", "minerva"), _STARCODER),
    **dict.fromkeys(("smollm", "command-r"), PreTokenizer((r"\p{N}", _GPT2), clean_spaces=False)),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                     "mpt", "olmo", "jais", "trillion", "mellum"), PreTokenizer((_GPT2,))),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    **dict.fromkeys(("chatglm-bpe", "glm4"), PreTokenizer((_LLAMA3,))),
}


@lru_cache(maxsize=1)
def byte_maps() -> tuple[dict[int, str], dict[str, int]]:
    """GPT-2's reversible byte <-> printable character mapping."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    enc = {b: chr(c) for b, c in zip(bs, cs)}
    return enc, {c: b for b, c in enc.items()}


def decode_text(text: str) -> bytes:
    """A byte-level token's text -> its bytes (llama.cpp's llama_decode_text)."""
    dec = byte_maps()[1]
    out = bytearray()
    for ch in text:
        b = dec.get(ch)
        if b is not None:
            out.append(b)
        else:
            out += b"[UNK_BYTE_0x" + ch.encode().hex().encode() + text.encode() + b"]"
    return bytes(out)


def pre_tokenizer_for(pre: str) -> PreTokenizer:
    p = PRE_TOKENIZERS.get(pre)
    if p is None:
        raise UnsupportedModel(f"unknown BPE pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
                               f"supported: {', '.join(sorted(PRE_TOKENIZERS))}")
    return p


def pre_tokenizer(pre: PreTokenizer) -> pre_tokenizers.PreTokenizer:
    """HF tokenizers' pre-tokenizer for llama.cpp's: the regexes in turn (the text between matches kept),
    then GPT-2's byte-to-character map."""
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def merge_pairs(token_to_id: dict[str, int], merges: Sequence[str]) -> list[tuple[str, str]]:
    """GGUF merges "a b" (split at the first space after the first character) as (a, b) pairs, keeping
    only those whose a, b and a + b are tokens (HF tokenizers refuses the others; llama.cpp can never
    apply them). BPEEncoder comes here only when a list went to tokenizers whole and was refused."""
    pairs = {}
    for m in merges:
        i = m.find(" ", 1)
        if i < 0:
            continue
        a, b = m[:i], m[i + 1:]
        if a in token_to_id and b in token_to_id and a + b in token_to_id:
            pairs.setdefault((a, b))           # listed twice: the first rank, as llama.cpp
    return list(pairs)


class BPEEncoder:
    """Raw text (no special tokens) -> ids, exactly as llama.cpp's BPE session."""

    def __init__(self, token_to_id: dict[str, int], merges: Sequence[str], pre: PreTokenizer):
        # HF tokenizers (Rust) aborts the process when an allocation fails: under an address-space cap
        # the headroom is checked first (twice what the build measured: SmolLM2's 49152 tokens and 48900
        # merges took 12 MiB of address space at its peak)
        require_address_space(350 * len(token_to_id) + 170 * len(merges), "building the BPE tokenizer")
        # a character that is no token must stay in the word, merging with nothing, and then be dropped, as
        # llama.cpp does (HF drops it first, so its neighbours could merge): it becomes an unknown token
        # outside the vocabulary's ids, taken out of every encoding
        unk = "<|cellar-unknown|>"
        while unk in token_to_id:
            unk += "#"
        self._unk = len(token_to_id)
        token_to_id[unk] = self._unk
        try:
            self._tok = self._build(token_to_id, merges, pre, unk)
        finally:
            del token_to_id[unk]

    @staticmethod
    def _build(token_to_id: dict[str, int], merges: Sequence[str], pre: PreTokenizer, unk: str) -> Tokenizer:
        bpe = None
        split = merges.split_pairs() if isinstance(merges, StringArray) else None
        if split is not None:
            # tokenizers checks every merge's a, b and a + b against the vocabulary as it builds, and
            # raises on the first that is missing (or panics, below): a well-formed file's list
            # goes in unchecked here (SmolLM2: 25-30 ms of a ~100 ms build on a 2-core EPYC), one with a
            # merge llama.cpp could never apply takes merge_pairs, which drops it
            pairs = list(dict.fromkeys(zip(*split)))     # a pair listed twice keeps its first rank, as in
            del split                                     # llama.cpp (HF would keep the last)
            try:
                bpe = models.BPE(vocab=token_to_id, merges=pairs, ignore_merges=pre.ignore_merges, unk_token=unk)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:       # noqa: BLE001 (tokenizers 0.23 panics, a BaseException, on some
                bpe = None              # merges whose join is no token: 'c🙂 é漢漢漢'; merge_pairs drops them)
            del pairs
        if bpe is None:
            pairs = merge_pairs(token_to_id, merges)
            bpe = models.BPE(vocab=token_to_id, merges=pairs, ignore_merges=pre.ignore_merges, unk_token=unk)
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizer(pre)
        return tok

    def token_id(self, text: str) -> int | None:
        i = self._tok.token_to_id(text)
        return None if i == self._unk else i

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [i for i in ids if i != self._unk] if self._unk in ids else ids
