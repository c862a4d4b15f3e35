"""Tokenizer: encode / decode / pieces, token-exact with llama.cpp (llama_tokenize, llama_detokenize,
llama_token_to_piece)."""
from __future__ import annotations

from typing import Iterable

from engine.errors import BadRequest
from engine.tokenizer.bpe import BPEEncoder, decode_text
from engine.tokenizer.native import NativeSPMEncoder
from engine.tokenizer.spm import SPACE, SPMEncoder
from engine.tokenizer.stream import StreamDecoder
from engine.tokenizer.vocab import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, Vocab

_SPECIAL = CONTROL | UNKNOWN


class Tokenizer:
    def __init__(self, vocab: Vocab, encoder: SPMEncoder | BPEEncoder, *, clean_spaces: bool = False):
        self.vocab = vocab
        self._enc = encoder
        self._spm = isinstance(encoder, (SPMEncoder, NativeSPMEncoder))
        self.clean_spaces = clean_spaces
        self.n_vocab = vocab.n_vocab
        self.bos_id = vocab.bos_id
        self.eos_id = vocab.eos_id
        self.eog_ids: frozenset[int] = vocab.eog_ids
        self.add_bos = vocab.add_bos
        self.add_eos = vocab.add_eos
        self._pieces: dict[int, bytes] = {}      # rendered on first use

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """llama_tokenize(text, add_special, parse_special): BOS/EOS as the metadata asks when
        add_special; special-token text becomes its id when parse_special (user-defined tokens always)."""
        v = self.vocab
        text = _valid_text(text)
        out: list[int] = []
        if add_special and v.add_bos and v.bos_id is not None:
            out.append(v.bos_id)
        prev_special = True
        for frag in v.partition(text, parse_special):
            if type(frag) is int:
                out.append(frag)
                prev_special = True
            elif self._spm:
                if v.add_space_prefix and prev_special:
                    frag = " " + frag
                out.extend(self._enc.encode(frag.replace(" ", SPACE)))
                prev_special = False
            else:
                out.extend(self._enc.encode(frag))
        if add_special and v.add_eos and v.eos_id is not None:
            out.append(v.eos_id)
        return out

    # -- pieces ----------------------------------------------------------------------------------
    def _check(self, token_id: int) -> None:
        if not 0 <= token_id < self.n_vocab:
            raise BadRequest(f"token id {token_id} is outside the vocabulary (0..{self.n_vocab - 1})")

    def _render(self, token_id: int) -> bytes:
        attr = self.vocab.attrs[token_id]
        text = self.vocab.tokens[token_id]
        if attr & (_SPECIAL | USER_DEFINED):
            return text.encode()
        if attr & NORMAL:
            return text.replace(SPACE, " ").encode() if self._spm else decode_text(text)
        if attr & BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """The bytes of one token (llama_token_to_piece); control/unknown tokens render as their
        text when special, else as nothing."""
        self._check(token_id)
        if not special and self.vocab.attrs[token_id] & _SPECIAL:
            return b""
        p = self._pieces.get(token_id)
        if p is None:
            p = self._pieces[token_id] = self._render(token_id)
        return p

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each token's text for display (a partial UTF-8 sequence shows as U+FFFD)."""
        return [self.token_to_piece(i).decode("utf-8", "replace") for i in ids]

    # -- decoding --------------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        """llama_detokenize(ids, remove_special=skip_special, unparse_special=not skip_special)."""
        ids = list(ids)
        v = self.vocab
        remove_space = v.add_space_prefix
        if skip_special and v.add_bos and ids and ids[0] == v.bos_id:
            remove_space = False
            ids = ids[1:]
        if skip_special and v.add_eos and ids and ids[-1] == v.eos_id:
            ids = ids[:-1]
        parts = []
        for i in ids:
            p = self.token_to_piece(i, special=not skip_special)
            if remove_space and p[:1] == b" ":
                p = p[1:]
            remove_space = False
            parts.append(p)
        out = b"".join(parts)
        return _clean_spaces(out) if self.clean_spaces else out

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.decode_bytes(ids, skip_special).decode("utf-8", "replace")

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def stream_decoder(self, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(lambda i: self.token_to_piece(i, special=not skip_special))


def _clean_spaces(data: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces, pass for pass, in place on one buffer as it does:
    " ?" " !" " ." " ," lose the space; " ' " loses both; " 's" " 'm" " 're" " 've" lose the space."""
    t = bytearray(data)
    n = len(t)
    total = 1 if n else 0
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    n, total, i = total, 1 if total else 0, 1
    while i < n:
        x = t[i]
        if x == 0x27 and i + 1 < n and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            total -= 1
            i += 1
            t[i] = 0
        t[total] = x
        total += 1
        i += 1
    n, total = total, 1 if total else 0
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm" or (i + 2 < n and bytes((x1, t[i + 2])) in (b"re", b"ve")):
                total -= 1
        t[total] = x
        total += 1
    return bytes(t[:total])


def _valid_text(text: str) -> str:
    """text as the UTF-8 it stands for: lone surrogates (bytes that were not UTF-8, kept by Python's
    surrogateescape in argv and file names, or a JSON string's unpaired \\ud800) become U+FFFD, one per
    invalid byte, as llama.cpp's UTF-8 decoder does; valid text is returned as it is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")
