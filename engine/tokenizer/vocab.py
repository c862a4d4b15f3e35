"""The vocabulary as llama.cpp loads it from GGUF metadata: token texts, scores, attributes, special ids,
end-of-generation set, add-BOS/EOS flags, and the special-token partition of raw text."""
from __future__ import annotations

import re
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from engine.errors import BadModelFile

# llama.cpp's token attributes (bit flags) and GGUF token types
UNDEFINED, UNKNOWN, UNUSED, NORMAL, CONTROL, USER_DEFINED, BYTE = 0, 1, 2, 4, 8, 16, 32
LSTRIP, RSTRIP = 128, 256
_TYPE_TO_ATTR = {0: UNDEFINED, 1: NORMAL, 2: UNKNOWN, 3: CONTROL, 4: USER_DEFINED, 5: UNUSED, 6: BYTE}

_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_FIM_TEXTS = {
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))
_C_SPACE = " \t\n\v\f\r"
_BYTE_TEXT = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_ATTR_LUT = np.array([_TYPE_TO_ATTR[t] for t in range(len(_TYPE_TO_ATTR))], dtype=np.int64)


@dataclass
class Vocab:
    model: str                    # "llama" (SPM) or "gpt2" (BPE)
    pre: str
    tokens: Sequence[str]         # the metadata's own array (shared, not copied) unless a token was empty
    scores: np.ndarray            # float32 [n_vocab]
    attrs: array                  # uint16 attribute bits per token (array("H"): 2 bytes a token)
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    eom_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog_ids: frozenset[int]
    specials: list[tuple[str, int, int]] = field(default_factory=list)   # (text, id, attr), longest first
    _index: dict[str, int] | None = field(default=None, repr=False)
    _special_keys: list[int] | None = field(default=None, repr=False)     # partition's prefilter keys

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def token_to_id(self) -> dict[str, int]:
        """text -> id, built when first asked (the encoders hold their own maps: BPE's in HF tokenizers,
        SPM's keyed by bytes; a str map of 49152 tokens is ~7 MiB of Python objects)."""
        if self._index is None:
            self._index = dict(zip(self.tokens, range(len(self.tokens))))
        return self._index

    def partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split raw text around special-token texts (llama.cpp's tokenizer_st_partition): control and
        unknown tokens only when parse_special, user-defined tokens always; longest tokens first."""
        frags: list[str | int] = [text] if text else []
        skip = (CONTROL | UNKNOWN) if not parse_special else 0
        # a special token can only occur if its first (up to) 3 characters do: a cheap prefilter
        heads = _heads(text)
        if self._special_keys is None:
            self._special_keys = [_key(stext[:3]) for stext, _, _ in self.specials]
        for (stext, sid, attr), skey in zip(self.specials, self._special_keys):
            if attr & skip or skey not in heads or not any(type(f) is str and stext in f for f in frags):
                continue
            out: list[str | int] = []
            for f in frags:
                if type(f) is not str or stext not in f:
                    out.append(f)
                    continue
                pos = 0
                while True:
                    m = f.find(stext, pos)
                    if m < 0:
                        if pos < len(f):
                            out.append(f[pos:])
                        break
                    left = f[pos:m]
                    if attr & LSTRIP:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        out.append(left)
                    out.append(sid)
                    pos = m + len(stext)
                    if attr & RSTRIP:
                        while pos < len(f) and f[pos] in _C_SPACE:
                            pos += 1
            frags = out
        return frags


def _codes(text: str) -> np.ndarray:
    """The text's code points + 1 as int64 (lone surrogates included): 1 to 0x110000, under 2^21, never 0,
    so that the keys of 1, 2 and 3 characters differ."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64) + 1


def _key(head: str) -> int:
    """1-3 characters as one int: 21 bits a character (63 bits at most), as _codes numbers them."""
    k = 0
    for ch in head:
        k = (k << 21) | (ord(ch) + 1)
    return k


def _heads(text: str) -> set[int]:
    """_key of every substring of 1, 2 and 3 characters of text, made by numpy over its code points (a
    set of str slices cost ~0.4 us a character: 55 ms of 108 for 140k characters)."""
    c = _codes(text)
    out: set[int] = set()
    for k in (1, 2, 3):
        if len(c) < k:
            break
        key = np.zeros(len(c) - k + 1, dtype=np.int64)
        for j in range(k):
            key = (key << 21) | c[j:len(c) - k + 1 + j]
        out.update(np.unique(key).tolist())
    return out


def _id(meta: dict[str, Any], key: str, default: int | None, n: int) -> int | None:
    if default is not None and default >= n:
        default = None
    v = meta.get(key)
    if v is None:
        return default
    v = int(v)
    return v if 0 <= v < n else default


def _tolist(v: Any) -> list:
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _flag(meta: dict[str, Any], key: str, default: bool) -> bool:
    v = meta.get(key)
    return default if v is None else bool(v)


def _attrs(types: Any, n: int) -> array:
    """GGUF token types -> llama.cpp attribute bits, 2 bytes a token; unknown types are UNDEFINED."""
    if types is None:
        return array("H", [NORMAL]) * n
    try:
        t = np.asarray(types)[:n]
        t = t.astype(np.int64) if t.dtype.kind in "iub" else None
    except (TypeError, ValueError, OverflowError):
        t = None
    if t is None:
        return array("H", [_TYPE_TO_ATTR.get(x, UNDEFINED) for x in _tolist(types)[:n]])
    a = np.where((t >= 0) & (t < _ATTR_LUT.size), _ATTR_LUT[np.clip(t, 0, _ATTR_LUT.size - 1)], UNDEFINED)
    return array("H", a.astype(np.uint16).tobytes())


def _memo(tokens: Sequence[str]) -> Callable[[int], str]:
    seen: dict[int, str] = {}

    def text(i: int) -> str:
        t = seen.get(i)
        if t is None:
            t = seen[i] = tokens[i]
        return t
    return text


def _first(find, texts) -> int | None:
    """The id of the first of `texts` in the vocabulary, or None."""
    return next((i for i in map(find, texts) if i is not None), None)


def _where(attrs: array, bits: int) -> list[int]:
    """Indices of the tokens with any of `bits` set."""
    return np.flatnonzero(np.frombuffer(attrs, dtype=np.uint16) & bits).tolist()


def load_vocab(meta: dict[str, Any], tokens: Sequence[str], find: Callable[[str], int | None], *,
               bpe_add_bos: bool = False) -> Vocab:
    """Read the vocabulary from GGUF metadata the way llama.cpp does (llama_vocab::impl::load), given its
    texts and their lookup from vocab_index (or the encoder built from it).
    bpe_add_bos: the BPE pre-tokenizer's add-BOS default, before the metadata overrides it."""
    model = meta.get("tokenizer.ggml.model")
    spm = model == "llama"
    n = len(tokens)
    scores_raw = meta.get("tokenizer.ggml.scores")
    types = meta.get("tokenizer.ggml.token_type")
    if (scores_raw is not None and len(scores_raw) < n) or (types is not None and len(types) < n):
        raise BadModelFile("GGUF tokenizer.ggml.scores/token_type are shorter than the vocabulary")
    try:
        scores = (np.asarray(scores_raw, dtype=np.float32)[:n].copy() if scores_raw is not None
                  else np.zeros(n, dtype=np.float32))
    except (TypeError, ValueError):
        raise BadModelFile("GGUF tokenizer.ggml.scores holds something other than numbers; the vocabulary is "
                           "corrupt") from None
    attrs = _attrs(types, n)
    for i in _where(attrs, BYTE):
        if not _BYTE_TEXT.fullmatch(tokens[i]):
            raise BadModelFile(f"GGUF token {i} is marked as a byte token but its text is {tokens[i][:20]!r}, "
                               f"not <0xHH>; the vocabulary is corrupt")

    bos = _id(meta, "tokenizer.ggml.bos_token_id", 1 if spm else 11, n)
    eos = _id(meta, "tokenizer.ggml.eos_token_id", 2 if spm else 11, n)
    unk = _id(meta, "tokenizer.ggml.unknown_token_id", 0 if spm else None, n)
    pad = _id(meta, "tokenizer.ggml.padding_token_id", None, n)
    eot = _id(meta, "tokenizer.ggml.eot_token_id", None, n)
    eom = _id(meta, "tokenizer.ggml.eom_token_id", None, n)
    fim = {k: _id(meta, f"tokenizer.ggml.fim_{k}_token_id", None, n) for k in ("pad", "rep", "sep")}
    add_bos = _flag(meta, "tokenizer.ggml.add_bos_token", True if spm else bpe_add_bos)
    add_eos = _flag(meta, "tokenizer.ggml.add_eos_token", False)
    add_space_prefix = _flag(meta, "tokenizer.ggml.add_space_prefix", spm)

    def control(i: int) -> None:
        attrs[i] |= CONTROL

    # auto-detect special tokens by text, as llama.cpp does (they become control tokens)
    if eot is None:
        eot = _first(find, _EOT_TEXTS)
        if eot is not None:
            control(eot)
    if eom is None and find("<|eom_id|>") is not None:
        eom = find("<|eom_id|>")
        control(eom)
    for k, candidates in _FIM_TEXTS.items():
        if fim[k] is None:
            fim[k] = _first(find, candidates)
            if fim[k] is not None:
                control(fim[k])
    text = _memo(tokens)                # each special's text decoded once
    for i in _where(attrs, CONTROL):
        if "unused" in text(i):
            attrs[i] |= UNUSED
    eog = {i for i in fim.values() if i is not None}
    for t in _EOG_TEXTS:
        i = find(t)
        if i is not None:
            eog.add(i)
            control(i)
    for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
        if find(t) is not None:
            attrs[find(t)] = USER_DEFINED
    eog.update(i for i in (eos, eot, eom) if i is not None)
    end = find("<|end|>")
    has = {t for t in ("<|return|>", "<|call|>", "<|calls|>", "<|flush|>") if find(t) in eog}
    if end in eog and (("<|return|>" in has and has & {"<|call|>", "<|calls|>"}) or {"<|calls|>", "<|flush|>"} <= has):
        eog.discard(end)
        attrs[end] = USER_DEFINED
    s_id = find("</s>")
    if s_id in eog and find("<|tool_response>") in eog:
        eog.discard(s_id)
        attrs[s_id] = NORMAL

    specials = [(text(i), i, attrs[i]) for i in _where(attrs, CONTROL | USER_DEFINED | UNKNOWN)]
    specials.sort(key=lambda s: -len(s[0].encode()))
    return Vocab(model=str(model), pre=str(meta.get("tokenizer.ggml.pre") or "default"), tokens=tokens,
                 scores=scores, attrs=attrs, bos_id=bos, eos_id=eos, eot_id=eot,
                 eom_id=eom, unk_id=unk, pad_id=pad, add_bos=add_bos, add_eos=add_eos,
                 add_space_prefix=add_space_prefix, eog_ids=frozenset(eog), specials=specials)
