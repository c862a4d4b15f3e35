"""GGUF fuzzing toolkit: a GGUF described as plain data, written back byte for byte (lies included),
mutations of it, and one harness that runs a file through everything that reads untrusted GGUF bytes.

    doc = Doc.read(path, max_bytes=256 << 10)      # header, metadata, tensor table (+ data if small)
    doc = mutate(doc, rng)                         # one semantic lie (hypothesis drives `rng`)
    path.write_bytes(doc.to_bytes())
    case = run_case(path)                          # Case(outcome, error, seconds, rss_growth)

`run_case` passes when the file loads and runs one token, or ends in an engine.errors type with a
one-line message; anything else (another exception, a hang, a big allocation) is a finding.
Used by tests/engine/test_fuzz_gguf.py and tools/fuzz_gguf.py.
"""
from __future__ import annotations

import os
import random
import struct
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
        I64: "<q", F64: "<d"}
_DTYPE_VT = {"uint8": U8, "int8": I8, "uint16": U16, "int16": I16, "uint32": U32, "int32": I32,
             "float32": F32, "bool": BOOL, "uint64": U64, "int64": I64, "float64": F64}


@dataclass
class KV:
    key: str
    vtype: int
    value: Any                   # scalar, str, or for ARR: (element type, list of values)


@dataclass
class TInfo:
    name: str
    ne: tuple[int, ...]          # ggml order
    ggml_type: int
    offset: int                  # relative to the data section


@dataclass
class Doc:
    """A GGUF file as data. n_tensors / n_kv override the counts written (None: the true counts);
    pad_to: the file is extended (sparse, zeros) to this size."""
    version: int = 3
    kvs: list[KV] = field(default_factory=list)
    tensors: list[TInfo] = field(default_factory=list)
    data: bytes = b""
    alignment: int = 32
    n_tensors: int | None = None
    n_kv: int | None = None
    pad_to: int = 0

    # ---- reading ---------------------------------------------------------------------------
    @classmethod
    def read(cls, path, max_data: int = 1 << 20) -> "Doc":
        """A doc of a real file: its metadata and tensor table exactly, its tensor data kept when the
        data section is at most max_data bytes, else replaced by zeros of the same size (pad_to)."""
        from engine.gguf import GGUFFile
        with GGUFFile.open(path, read_data=False) as g:
            kvs = [KV(k, g.metadata_types[k], _to_value(g.metadata_types[k], v)) for k, v in g.metadata.items()]
            tensors = [TInfo(t.name, tuple(t.ne), int(t.qtype), t.offset - g.data_offset) for t in g.tensors.values()]
            n_data = g.file_size - g.data_offset
            doc = cls(g.version, kvs, tensors, b"", g.alignment)
            if n_data <= max_data:
                with open(path, "rb") as f:
                    f.seek(g.data_offset)
                    doc.data = f.read()
            else:
                doc.pad_to = g.file_size
            return doc

    def kv(self, key: str) -> KV | None:
        return next((k for k in self.kvs if k.key == key), None)

    @property
    def arch(self) -> str:
        k = self.kv("general.architecture")
        return k.value if k and isinstance(k.value, str) else "llama"

    # ---- writing ---------------------------------------------------------------------------
    def header_bytes(self) -> bytes:
        out = bytearray(b"GGUF")
        out += struct.pack("<IQQ", self.version & 0xFFFFFFFF,
                           _u64(len(self.tensors) if self.n_tensors is None else self.n_tensors),
                           _u64(len(self.kvs) if self.n_kv is None else self.n_kv))
        for kv in self.kvs:
            out += _str(kv.key) + struct.pack("<I", kv.vtype & 0xFFFFFFFF) + _value(kv.vtype, kv.value)
        for t in self.tensors:
            out += _str(t.name) + struct.pack("<I", len(t.ne))
            out += b"".join(struct.pack("<Q", _u64(d)) for d in t.ne)
            out += struct.pack("<IQ", t.ggml_type & 0xFFFFFFFF, _u64(t.offset))
        return bytes(out)

    def metadata_end(self) -> int:
        """Offset where the tensor table starts."""
        return 24 + sum(len(_str(k.key)) + 4 + len(_value(k.vtype, k.value)) for k in self.kvs)

    def to_bytes(self) -> bytes:
        head = self.header_bytes()
        align = self.alignment if isinstance(self.alignment, int) and 0 < self.alignment <= 1 << 16 else 32
        head += b"\0" * (-len(head) % align)
        return head + self.data

    def write(self, path) -> Path:
        path = Path(path)
        raw = self.to_bytes()
        with open(path, "wb") as f:
            f.write(raw)
            if self.pad_to > len(raw):
                f.truncate(self.pad_to)       # sparse: zeros that cost no disk and no RAM until read
        return path


def _u64(v: int) -> int:
    return int(v) & 0xFFFFFFFFFFFFFFFF


def _str(s: str | bytes) -> bytes:
    b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _value(vtype: int, v: Any) -> bytes:
    if vtype in _FMT:
        fmt = _FMT[vtype]
        if fmt[1] in "fd":
            return struct.pack(fmt, float(v) if isinstance(v, (int, float)) else 0.0)
        if fmt[1] == "?":
            return struct.pack("<B", int(bool(v)))
        bits = struct.calcsize(fmt) * 8            # any int fits: written as its two's complement bits
        iv = int(v) if isinstance(v, int) or (isinstance(v, float) and v == v and abs(v) != float("inf")) else 0
        return struct.pack("<" + fmt[1].upper(), iv & ((1 << bits) - 1))
    if vtype == STR:
        return _str(v if isinstance(v, (str, bytes)) else str(v))
    if vtype == ARR:
        etype, items = v[0], v[1]
        n = v[2] if len(v) > 2 else len(items)    # a lying element count
        return struct.pack("<IQ", etype & 0xFFFFFFFF, _u64(n)) + b"".join(_value(etype, x) for x in items)
    return b""                                   # unknown type: no payload (the reader must refuse)


def _to_value(vtype: int, v: Any) -> Any:
    if vtype != ARR:
        return v
    if isinstance(v, np.ndarray):
        return (_DTYPE_VT[v.dtype.name], v.tolist())
    if v and all(isinstance(x, str) for x in v):
        return (STR, list(v))
    if v and all(isinstance(x, (list, np.ndarray)) for x in v):
        return (ARR, [_to_value(ARR, x) for x in v])
    return (STR, list(v))


# ---- seeds ---------------------------------------------------------------------------------------
def tiny_gemma3(path, n_layer: int = 2, n_embd: int = 64, n_head: int = 2, head_dim: int = 32, n_ff: int = 128,
                n_vocab: int = 64, seed: int = 0) -> Path:
    """A small gemma3-shaped model (SentencePiece vocab, Q/K norms, post-norms, sliding window)."""
    from tests.ggufgen import write_gguf
    rng = np.random.default_rng(seed)

    def mat(r, c):
        return (rng.standard_normal((r, c)) * 0.05).astype(np.float32)

    t = {"token_embd.weight": mat(n_vocab, n_embd)}
    for i in range(n_layer):
        p = f"blk.{i}."
        for nm, n in (("attn_norm", n_embd), ("attn_q_norm", head_dim), ("attn_k_norm", head_dim),
                      ("post_attention_norm", n_embd), ("ffn_norm", n_embd), ("post_ffw_norm", n_embd)):
            t[p + nm + ".weight"] = np.ones(n, np.float32)
        t[p + "attn_q.weight"] = mat(n_head * head_dim, n_embd)
        t[p + "attn_k.weight"] = mat(head_dim, n_embd)
        t[p + "attn_v.weight"] = mat(head_dim, n_embd)
        t[p + "attn_output.weight"] = mat(n_embd, n_head * head_dim)
        t[p + "ffn_gate.weight"] = mat(n_ff, n_embd)
        t[p + "ffn_up.weight"] = mat(n_ff, n_embd)
        t[p + "ffn_down.weight"] = mat(n_embd, n_ff)
    t["output_norm.weight"] = np.ones(n_embd, np.float32)
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tokens += ["\u2581" + chr(0x61 + i % 26) * (1 + i // 26) for i in range(n_vocab - len(tokens))]
    a = "gemma3"
    meta = {
        "general.name": "tiny-gemma3", f"{a}.context_length": 512, f"{a}.embedding_length": n_embd,
        f"{a}.block_count": n_layer, f"{a}.feed_forward_length": n_ff, f"{a}.attention.head_count": n_head,
        f"{a}.attention.head_count_kv": 1, f"{a}.attention.key_length": head_dim,
        f"{a}.attention.value_length": head_dim, f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{a}.rope.freq_base": 1e6, f"{a}.attention.sliding_window": 16,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": -np.arange(n_vocab, dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([3, 3, 3, 2, 3, 3] + [1] * (n_vocab - 6), np.int32),
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.add_bos_token": True,
    }
    return write_gguf(path, arch=a, metadata=meta, tensors=t)


def tiny_bpe_llama(path) -> Path:
    """A tiny llama with a GPT-2 style byte-level BPE vocabulary and merges (SmolLM2's tokenizer kind)."""
    from engine.tokenizer.bpe import byte_maps
    from tests.ggufgen import tiny_llama
    base = Doc.read(tiny_llama(path, n_vocab=300))
    enc = byte_maps()[0]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [enc[b] for b in range(256)]
    merges = ["\u0120 t", "h e", "\u0120t he", "i n", "a n", "e r", "o n", "r e", "\u0120 a", "e n", "a t", "o r",
              "e s", "\u0120 s", "i s", "\u0120 w", "l l", "\u0120 o", "\u0120 c", "\u0120 b", "\u0120 f", "i t",
              "\u0120 p", "a l", "i c", "\u0120 m", "e d", "o u", "a r", "\u0120 h", "\u0120 d", "\u0120 th",
              "\u0120 i", "\u0120 in", "i ng", "\u0120 an", "\u0120 re", "\u0120 to", "\u0120 of", "e l"]
    for m in merges:
        a, b = m.split(" ")
        if len(tokens) < 300 and a + b not in tokens:
            tokens.append(a + b)
    while len(tokens) < 300:
        tokens.append(f"<extra_{len(tokens)}>")
    keep = {"tokenizer.ggml.scores"}
    base.kvs = [k for k in base.kvs if not k.key.startswith("tokenizer.") or k.key in keep]
    base.kvs = [k for k in base.kvs if k.key != "tokenizer.ggml.scores"]
    base.kvs += [KV("tokenizer.ggml.model", STR, "gpt2"), KV("tokenizer.ggml.pre", STR, "smollm"),
                 KV("tokenizer.ggml.tokens", ARR, (STR, tokens)),
                 KV("tokenizer.ggml.token_type", ARR, (I32, [3, 3, 3] + [1] * 297)),
                 KV("tokenizer.ggml.merges", ARR, (STR, merges)),
                 KV("tokenizer.ggml.bos_token_id", U32, 1), KV("tokenizer.ggml.eos_token_id", U32, 2),
                 KV("tokenizer.chat_template", STR, "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                    "{% endif %}")]
    return base.write(path)


# ---- mutations -----------------------------------------------------------------------------------
INTS = [0, 1, 2, 3, 7, 31, 32, 33, 64, 255, 256, 4095, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
        2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -1, -2, -2**31, -2**63]
FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, float("inf"), float("-inf"), float("nan"), 0.5, 1e6]
STRINGS = ["", "llama", "gemma3", "gpt2", "\n", "a\nb\r\x00c", "\u2581", "{{ 7*7 }}", "x" * 5000,
           "\udcff", "{% for x in range(10**9) %}x{% endfor %}", "blk.0.attn_q.weight", "token_embd.weight"]

ARCH_KEYS = ["context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
             "attention.head_count_kv", "attention.key_length", "attention.value_length",
             "attention.layer_norm_rms_epsilon", "attention.sliding_window", "rope.freq_base",
             "rope.dimension_count", "vocab_size", "rope.scaling.type", "rope.scaling.factor",
             "attention.sliding_window_pattern"]
GENERAL_KEYS = ["general.architecture", "general.alignment", "general.name", "tokenizer.ggml.model",
                "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template", "tokenizer.ggml.padding_token_id"]


def random_value(rng: random.Random, depth: int = 0) -> tuple[int, Any]:
    vt = rng.choice([U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64, 13, 99])
    if vt in (F32, F64):
        return vt, rng.choice(FLOATS)
    if vt == BOOL:
        return vt, rng.random() < 0.5
    if vt == STR:
        return vt, rng.choice(STRINGS)
    if vt == ARR:
        if depth > 1:
            return U32, rng.choice(INTS)
        et = rng.choice([U8, I32, U32, F32, STR, BOOL, I64, ARR])
        n = rng.choice([0, 1, 2, 3, 5, 30])
        items = [random_value(rng, depth + 1)[1] if et == ARR else _elem(rng, et) for _ in range(n)]
        if et == ARR:
            items = [(I32, [1, 2])] * n
        return vt, (et, items)
    if vt in (13, 99):
        return vt, None
    return vt, rng.choice(INTS)


def _elem(rng: random.Random, et: int) -> Any:
    if et in (F32, F64):
        return rng.choice(FLOATS)
    if et == STR:
        return rng.choice(STRINGS[:9])
    if et == BOOL:
        return rng.random() < 0.5
    return rng.choice(INTS)


def _arch_key(doc: Doc, rng: random.Random) -> str:
    if rng.random() < 0.6:
        return f"{doc.arch}.{rng.choice(ARCH_KEYS)}"
    if rng.random() < 0.7:
        return rng.choice(GENERAL_KEYS)
    return rng.choice(doc.kvs).key if doc.kvs else "general.name"


def m_set_key(doc: Doc, rng: random.Random) -> str:
    key = _arch_key(doc, rng)
    old = doc.kv(key)
    if old is not None and old.vtype in (U32, I32, U64, I64) and rng.random() < 0.6:
        vt, v = old.vtype, rng.choice(INTS)       # the right type, a lying value
    else:
        vt, v = random_value(rng)
    if old is None:
        doc.kvs.append(KV(key, vt, v))
    else:
        old.vtype, old.value = vt, v
    return f"set {key} = {_short(vt, v)}"


def m_drop_key(doc: Doc, rng: random.Random) -> str:
    key = _arch_key(doc, rng)
    doc.kvs = [k for k in doc.kvs if k.key != key]
    return f"drop {key}"


def m_dup_key(doc: Doc, rng: random.Random) -> str:
    if not doc.kvs:
        return "noop"
    k = rng.choice(doc.kvs)
    doc.kvs.insert(rng.randrange(len(doc.kvs) + 1), KV(k.key, k.vtype, k.value))
    return f"duplicate key {k.key}"


def m_vocab(doc: Doc, rng: random.Random) -> str:
    """Lies inside the vocabulary arrays: wrong lengths, duplicates, odd texts, bad types and ids."""
    kv = doc.kv("tokenizer.ggml.tokens")
    if kv is None or kv.vtype != ARR:
        return m_set_key(doc, rng)
    et, toks = kv.value[0], list(kv.value[1])
    what = rng.choice(["dup", "empty", "drop", "bytes", "count", "types", "scores", "merges", "ids"])
    if what == "dup" and len(toks) > 4:
        i, j = rng.sample(range(len(toks)), 2)
        toks[i] = toks[j]
    elif what == "empty" and toks:
        toks[rng.randrange(len(toks))] = ""
    elif what == "drop":
        toks = toks[: rng.choice([0, 1, len(toks) // 2, len(toks) - 1])]
    elif what == "bytes" and toks:
        toks[rng.randrange(len(toks))] = rng.choice(["<0xZZ>", "<0x>", "<0x1>", "\udcff", "\n" * 3, "\x00"])
    elif what == "count":
        kv.value = (et, toks, rng.choice([len(toks) + 1, 2**40, 2**63, 0]))
        return "lying token count"
    elif what == "types":
        tt = doc.kv("tokenizer.ggml.token_type")
        if tt is not None and tt.vtype == ARR:
            vals = list(tt.value[1])
            if vals:
                for _ in range(3):
                    vals[rng.randrange(len(vals))] = rng.choice([-1, 0, 6, 7, 2**31 - 1, 100])
            tt.value = (tt.value[0], vals)
            if toks and vals and rng.random() < 0.5:
                i = rng.randrange(min(len(vals), len(toks)))      # an earlier mutation may have cut either
                vals[i] = 6                          # a byte token whose text is not <0xXX>
                toks[i] = rng.choice(["ab", "<0x", "<0xG1>", ""])
    elif what == "scores":
        sc = doc.kv("tokenizer.ggml.scores")
        if sc is not None and sc.vtype == ARR:
            vals = list(sc.value[1])
            if vals:
                vals[rng.randrange(len(vals))] = rng.choice(FLOATS)
            sc.value = (rng.choice([sc.value[0], I32, STR]) if rng.random() < 0.3 else sc.value[0],
                        vals if rng.random() < 0.7 else vals[:-1])
            if sc.value[0] == STR:
                sc.value = (STR, [str(x) for x in vals])
    elif what == "merges":
        mk = doc.kv("tokenizer.ggml.merges")
        if mk is not None and mk.vtype == ARR:
            vals = list(mk.value[1])
            for _ in range(3):
                if vals:
                    vals[rng.randrange(len(vals))] = rng.choice(["", " ", "a", "a b c", "zz yy", "\n \n", "  x"])
            mk.value = (mk.value[0], vals)
    elif what == "ids":
        key = rng.choice(["bos", "eos", "unknown", "eot", "padding"])
        k = f"tokenizer.ggml.{key}_token_id"
        doc.kvs = [x for x in doc.kvs if x.key != k] + [KV(k, rng.choice([U32, I32, U64]), rng.choice(INTS))]
    kv.value = (et, toks)
    return f"vocab: {what}"


def m_tensor(doc: Doc, rng: random.Random) -> str:
    if not doc.tensors:
        return "noop"
    i = rng.randrange(len(doc.tensors))
    t = doc.tensors[i]
    what = rng.choice(["dims", "ndims", "type", "offset", "overlap", "dup", "drop", "rename", "zero", "swap"])
    if what == "dims":
        ne = list(t.ne)
        ne[rng.randrange(len(ne))] = rng.choice([1, 2, 31, 32, 64, 256, 2**20, 2**32, 2**40, 2**62, 2**64 - 1])
        t.ne = tuple(ne)
    elif what == "ndims":
        t.ne = tuple(list(t.ne) + [1] * 4)[: rng.choice([0, 1, 2, 3, 4, 5, 8])] or ()
    elif what == "type":
        t.ggml_type = rng.choice([0, 1, 2, 3, 6, 8, 12, 14, 15, 16, 20, 30, 39, 40, 255, 2**32 - 1])
    elif what == "offset":
        t.offset = rng.choice([0, 1, 31, 32, len(doc.data), len(doc.data) + 32, 2**40, 2**63, 2**64 - 32])
    elif what == "overlap" and len(doc.tensors) > 1:
        t.offset = rng.choice(doc.tensors).offset
    elif what == "dup" and len(doc.tensors) > 1:
        t.name = rng.choice(doc.tensors).name
    elif what == "drop":
        doc.tensors.pop(i)
    elif what == "rename":
        t.name = rng.choice(["", "blk.99.attn_q.weight", "blk.-1.x", "blk.999999999999.attn_q.weight",
                             "output.weight", "a\nb", "x" * 70000])
    elif what == "zero":
        ne = list(t.ne)
        ne[-1] = 0
        t.ne = tuple(ne)
    elif what == "swap" and len(doc.tensors) > 1:
        j = rng.randrange(len(doc.tensors))
        t.ne, doc.tensors[j].ne = doc.tensors[j].ne, t.ne
    return f"tensor {t.name[:40]!r}: {what}"


def m_header(doc: Doc, rng: random.Random) -> str:
    what = rng.choice(["version", "n_tensors", "n_kv", "alignment", "short_data"])
    if what == "version":
        doc.version = rng.choice([0, 1, 2, 4, 0x03000000, 2**32 - 1])
    elif what == "n_tensors":
        doc.n_tensors = rng.choice([0, len(doc.tensors) + 1, max(len(doc.tensors) - 1, 0), 2**32, 2**63])
    elif what == "n_kv":
        doc.n_kv = rng.choice([0, len(doc.kvs) + 1, max(len(doc.kvs) - 1, 0), 2**40, 2**64 - 1])
    elif what == "alignment":
        v = rng.choice([0, 1, 3, 16, 64, 4096, 2**31, 2**64 - 1])
        doc.kvs = [k for k in doc.kvs if k.key != "general.alignment"] + [KV("general.alignment", U64, v)]
        if 0 < v <= 4096 and v & (v - 1) == 0:
            doc.alignment = v
    elif what == "short_data":
        if doc.pad_to:
            doc.pad_to = rng.randrange(doc.pad_to // 2, doc.pad_to)
        else:
            doc.data = doc.data[: rng.randrange(len(doc.data) + 1)]
    return f"header: {what}"


MUTATORS = [m_set_key, m_set_key, m_drop_key, m_dup_key, m_vocab, m_vocab, m_tensor, m_tensor, m_header]


def mutate(doc: Doc, rng: random.Random, n: int = 1) -> tuple[Doc, list[str]]:
    """A copy of doc with n semantic lies; returns it and what was done."""
    import copy
    d = copy.deepcopy(doc)
    return d, [rng.choice(MUTATORS)(d, rng) for _ in range(n)]


def mutate_bytes(raw: bytes, rng: random.Random, n: int = 4, limit: int | None = None) -> bytes:
    """Raw byte lies within the first `limit` bytes: flipped bytes, u32/u64 fields overwritten with
    special values, cuts and splices."""
    b = bytearray(raw)
    end = min(len(b), limit or len(b))
    for _ in range(n):
        if end < 9:
            break
        at = rng.randrange(4, end - 8)
        op = rng.randrange(5)
        if op == 0:
            b[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[at] = rng.randrange(256)
        elif op == 2:
            struct.pack_into("<Q", b, at, _u64(rng.choice(INTS)))
        elif op == 3:
            struct.pack_into("<I", b, at, rng.choice(INTS) & 0xFFFFFFFF)
        else:
            src = rng.randrange(4, end - 8)
            ln = rng.randrange(1, 64)
            b[at:at + ln] = raw[src:src + ln]
    return bytes(b)


def _short(vt: int, v: Any) -> str:
    r = repr(v)
    return f"{vt}:{r[:60]}"


# ---- section boundaries --------------------------------------------------------------------------
def section_boundaries(doc: Doc) -> list[int]:
    """Byte offsets where each part of the file starts and ends: header fields, every key, every
    value, every tensor-table entry, the data section, and each tensor's data."""
    cuts = [0, 4, 8, 16, 24]
    pos = 24
    for kv in doc.kvs:
        pos += len(_str(kv.key))
        cuts += [pos, pos + 4]
        pos += 4 + len(_value(kv.vtype, kv.value))
        cuts.append(pos)
    for t in doc.tensors:
        pos += len(_str(t.name))
        cuts += [pos, pos + 4]
        pos += 4 + 8 * len(t.ne) + 12
        cuts.append(pos)
    data0 = pos + (-pos % (doc.alignment or 32))
    cuts.append(data0)
    size = len(doc.to_bytes()) if not doc.pad_to else doc.pad_to
    for t in doc.tensors:
        cuts += [data0 + t.offset, data0 + t.offset + 1]
    cuts.append(size - 1)
    return sorted({c for c in cuts if 0 <= c < size})


# ---- the harness ---------------------------------------------------------------------------------
@dataclass
class Case:
    outcome: str            # "ok" (loaded and ran a token) or the ErrorKind value
    error: str              # the one-line message ("" when ok)
    seconds: float
    rss_growth: int         # peak RSS during the case minus RSS before it, bytes
    stage: str = ""         # how far it got


class Finding(AssertionError):
    """Not a typed one-line error: the case broke the contract."""


def _status(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def exercise(path, *, load: bool = True, stages: list | None = None) -> None:
    """Everything that reads an untrusted GGUF: reader, model summary and memory plan (inspect and
    the load preview), tokenizer and chat template, then a load (warmup off) and one token."""
    from engine.errors import CellarError
    from engine.gguf import GGUFFile
    from engine.memory import Settings, plan
    from engine.model_info import model_summary
    from engine.templates import chat_template_for, render_chat
    from engine.tokenizer import load_tokenizer

    stages = stages if stages is not None else []
    stages.append("open")
    with GGUFFile.open(path, read_data=False) as g:
        stages.append("summary")
        model_summary(g)
        stages.append("plan")
        plan(g, Settings(ctx=256, batch=32, ubatch=32), free_ram=8 << 30, free_vram=None)
        stages.append("tokenizer")
        tok = load_tokenizer(g)
        ids = tok.encode("Hello <|im_end|> wörld ▁ 123\n", add_special=True)
        tok.decode(ids)
        for i in (0, tok.n_vocab - 1):
            tok.token_to_piece(i)
        stages.append("template")
        try:
            render_chat(chat_template_for(g), [{"role": "user", "content": "hi"}],
                        bos_token="", eos_token="")
        except CellarError:
            pass                              # a bad template is refused at chat time, not at load
    if not load:
        return
    from engine.runtime import LoadOptions, Model
    stages.append("load")
    m = Model.load(path, LoadOptions(ctx=64, batch=16, ubatch=16, warmup=False, threads=1))
    try:
        stages.append("token")
        m.eval([max(tok.bos_id or 0, 0)])
    finally:
        m.close()


def run_case(path, *, load: bool = True) -> Case:
    """Run one file through `exercise`; a Case when it ended well, Finding when it did not."""
    from engine.errors import CellarError
    rss0 = _status("VmRSS")
    _reset_peak()
    stages: list[str] = []
    t0 = time.perf_counter()
    try:
        exercise(path, load=load, stages=stages)
        outcome, msg = "ok", ""
    except CellarError as e:
        msg = str(e)
        outcome = e.kind.value
        if not msg or "\n" in msg or "\r" in msg:
            raise Finding(f"{Path(path).name}: {type(e).__name__} message is not one line: {msg!r}") from e
    except (RecursionError, MemoryError, Exception) as e:
        raise Finding(f"{Path(path).name}: {type(e).__name__} at stage {stages[-1] if stages else '?'}: "
                      f"{str(e)[:300]}") from e
    dt = time.perf_counter() - t0
    return Case(outcome, msg, dt, max(_status("VmHWM") - rss0, 0), stages[-1] if stages else "")


class AddressSpaceCap:
    """Cap this process's address space at its current size + headroom (RLIMIT_AS, soft limit only,
    restored on exit): a lying header that asks for a multi-GB buffer gets MemoryError, not the RAM."""

    def __init__(self, headroom: int = 2 << 30):
        self.headroom = headroom

    def __enter__(self):
        import resource
        self.old = resource.getrlimit(resource.RLIMIT_AS)
        cap = _status("VmSize") + self.headroom
        hard = self.old[1]
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        self.cap = cap
        return self

    def __exit__(self, *exc):
        import resource
        resource.setrlimit(resource.RLIMIT_AS, self.old)


def seed_docs(folder: Path, real: list[Path] = ()) -> dict[str, Doc]:
    """The seeds: tiny llama (F32, Q8_0, Q4_K, with rope_freqs), tiny gemma3, qwen2 and qwen3, tiny BPE llama,
    and each real model's metadata and tensor table over zeroed (sparse) tensor data."""
    from engine.quant import GGMLType
    from tests.ggufgen import tiny_llama
    folder.mkdir(parents=True, exist_ok=True)
    seeds = {
        "llama_f32": Doc.read(tiny_llama(folder / "llama_f32.gguf")),
        "llama_q8": Doc.read(tiny_llama(folder / "llama_q8.gguf", qtype=GGMLType.Q8_0)),
        "llama_q4k": Doc.read(tiny_llama(folder / "llama_q4k.gguf", qtype=GGMLType.Q4_K, n_embd=256, n_ff=256)),
        "gemma3": Doc.read(tiny_gemma3(folder / "gemma3.gguf")),
        "llama_bpe": Doc.read(tiny_bpe_llama(folder / "llama_bpe.gguf")),
        "llama_rope_freqs": Doc.read(tiny_llama(folder / "llama_rope.gguf", rope_freqs=[1.0, 2.0, 4.0, 8.0] * 2)),
        "qwen2": Doc.read(tiny_llama(folder / "qwen2.gguf", arch="qwen2", qkv_bias=True, tied=True)),
        "qwen3": Doc.read(tiny_llama(folder / "qwen3.gguf", arch="qwen3", qk_norm=True, head_dim=32, tied=True)),
    }
    for p in real:
        seeds["real_" + Path(p).stem.split("-")[0].lower()] = Doc.read(p, max_data=0)
    return seeds


# ---- the regression corpus -----------------------------------------------------------------------
def corpus_seeds(folder: Path) -> dict[str, Doc]:
    """Seeds small enough for committed corpus files (a few KB each)."""
    from engine.quant import GGMLType
    from tests.ggufgen import tiny_llama
    folder.mkdir(parents=True, exist_ok=True)
    return {"llama": Doc.read(tiny_llama(folder / "c_llama.gguf", qtype=GGMLType.Q8_0, n_layer=1, n_embd=32,
                                         n_head=2, n_head_kv=1, n_ff=32, n_vocab=32)),
            "gemma3": Doc.read(tiny_gemma3(folder / "c_gemma3.gguf", n_layer=1, n_embd=32, n_head=2, head_dim=16,
                                           n_ff=32, n_vocab=32))}


def _set(key: str, vtype: int, value):
    def edit(d: Doc) -> None:
        k = d.kv(key.replace("{a}", d.arch))
        if k is None:
            d.kvs.append(KV(key.replace("{a}", d.arch), vtype, value))
        else:
            k.vtype, k.value = vtype, value
    return edit


def _drop(key: str):
    def edit(d: Doc) -> None:
        d.kvs = [k for k in d.kvs if k.key != key.replace("{a}", d.arch)]
    return edit


def _tensor(tname: str, **changes):
    def edit(d: Doc) -> None:
        t = next(t for t in d.tensors if t.name == tname)
        for k, v in changes.items():
            setattr(t, k, v(t, d) if callable(v) else v)
    return edit


def _do(fn):
    return fn


def _byte_token(d: Doc) -> None:
    d.kv("tokenizer.ggml.token_type").value[1][10] = 6


def _dup_tensor(d: Doc) -> None:
    d.tensors[2].name = d.tensors[1].name


def _dup_key(d: Doc) -> None:
    d.kvs.append(KV("general.name", STR, "again"))


def _overlap(d: Doc) -> None:
    d.tensors[2].offset = d.tensors[1].offset


def _bad_utf8(d: Doc) -> None:
    d.kv("tokenizer.ggml.tokens").value[1][12] = "\udcc4\udcff"      # written as the raw bytes C4 FF


def _vocab_short(d: Doc) -> None:
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        k = d.kv(key)
        if k is not None:
            k.value = (k.value[0], k.value[1][:-1])


def _vocab_dup(d: Doc) -> None:
    d.kv("tokenizer.ggml.tokens").value[1][7] = d.kv("tokenizer.ggml.tokens").value[1][8]


def _short_data(d: Doc) -> None:
    d.data = d.data[:-100]


def _nested(d: Doc) -> None:
    d.kvs.append(KV("x.nested", ARR, (ARR, [], 1 << 20)))


def _rename_arch(d: Doc) -> None:
    for k in d.kvs:
        if k.key.startswith("llama."):
            k.key = "mamba9." + k.key[len("llama."):]
    d.kv("general.architecture").value = "mamba9"


# name: (seed, edit, expected ErrorKind value, a substring of the message)
CORPUS: dict[str, tuple] = {
    "block_count_2e64": ("gemma3", _set("{a}.block_count", U64, 2**64 - 1), "bad_model_file", "block_count"),
    "block_count_beyond_tensors": ("llama", _set("{a}.block_count", U32, 5), "bad_model_file", "missing"),
    "layer_index_1e12": ("llama", _tensor("blk.0.ffn_norm.weight", name="blk.999999999999.ffn_norm.weight"),
                         "bad_model_file", "layer 999999999999"),
    "context_length_2e62": ("llama", _set("{a}.context_length", U64, 2**62), "bad_model_file", "context_length"),
    "embedding_length_2e40": ("llama", _set("{a}.embedding_length", U64, 2**40), "bad_model_file",
                              "embedding_length"),
    "embedding_length_mismatch": ("llama", _set("{a}.embedding_length", U32, 64), "bad_model_file", "shape"),
    "head_count_zero": ("llama", _set("{a}.attention.head_count", U32, 0), "bad_model_file", "head_count"),
    "head_count_kv_not_divisor": ("gemma3", _set("{a}.attention.head_count_kv", U32, 3), "bad_model_file",
                                  "KV heads"),
    "key_length_65535": ("llama", _set("{a}.attention.key_length", U32, 65535), "bad_model_file", "shape"),
    "rope_dim_zero": ("llama", _set("{a}.rope.dimension_count", U32, 0), "bad_model_file", "dimension_count"),
    "rope_base_nan": ("gemma3", _set("{a}.rope.freq_base", F32, float("nan")), "bad_model_file", "freq_base"),
    "eps_negative": ("llama", _set("{a}.attention.layer_norm_rms_epsilon", F32, -1.0), "bad_model_file",
                     "epsilon"),
    "rope_scaling_type_array": ("gemma3", _set("{a}.rope.scaling.type", ARR, (I32, [0, 2**31 - 1, 33])), "ok", ""),
    "rope_scaling_factor_string": ("gemma3", _do(lambda d: (_set("{a}.rope.scaling.type", STR, "linear")(d),
                                                            _set("{a}.rope.scaling.factor", STR, "x")(d))),
                                   "bad_model_file", "scaling.factor"),
    "ff_length_string": ("llama", _set("{a}.feed_forward_length", STR, "1536"), "bad_model_file",
                         "feed_forward_length"),
    "missing_architecture": ("llama", _drop("general.architecture"), "bad_model_file", "general.architecture"),
    "llama_missing_block_count": ("llama", _drop("{a}.block_count"), "bad_model_file", "block_count"),
    "llama_missing_embedding_length": ("llama", _drop("{a}.embedding_length"), "bad_model_file",
                                       "embedding_length"),
    "llama_missing_head_count": ("llama", _drop("{a}.attention.head_count"), "bad_model_file", "head_count"),
    "gemma3_missing_ff_length": ("gemma3", _drop("{a}.feed_forward_length"), "bad_model_file",
                                 "feed_forward_length"),
    "gemma3_missing_eps": ("gemma3", _drop("{a}.attention.layer_norm_rms_epsilon"), "bad_model_file", "epsilon"),
    "gemma3_missing_q_norm": ("gemma3", _do(lambda d: setattr(d, "tensors", [t for t in d.tensors
                                                                             if "q_norm" not in t.name])),
                              "bad_model_file", "attn_q_norm"),
    "missing_tokenizer": ("llama", _drop("tokenizer.ggml.model"), "bad_model_file", "tokenizer"),
    "unknown_arch": ("llama", _do(_rename_arch), "unsupported", "mamba9"),
    "arch_is_int": ("llama", _set("general.architecture", U32, 7), "bad_model_file", "general.architecture"),
    "tensor_swapped_shapes": ("llama", _do(lambda d: _swap(d, "blk.0.attn_q.weight", "blk.0.attn_k.weight")),
                              "bad_model_file", "shape"),
    "n_dims_5": ("llama", _tensor("blk.0.attn_norm.weight", ne=(32, 1, 1, 1, 1)), "bad_model_file", "5 dimensions"),
    "n_dims_0": ("llama", _tensor("blk.0.attn_norm.weight", ne=()), "bad_model_file", "0 dimensions"),
    "zero_size_dim": ("llama", _tensor("blk.0.attn_q.weight", ne=(32, 0)), "bad_model_file", "zero-sized"),
    "dims_overflow": ("llama", _tensor("blk.0.attn_q.weight", ne=(2**32, 2**32, 2**32)), "bad_model_file",
                      "overflow"),
    "huge_dims_past_end": ("llama", _tensor("blk.0.attn_q.weight", ne=(32, 2**40)), "bad_model_file",
                           "runs past the end"),
    "offset_past_end": ("llama", _tensor("output.weight", offset=2**40), "bad_model_file", "runs past the end"),
    "offset_unaligned": ("llama", _tensor("output.weight", offset=lambda t, d: t.offset + 1), "bad_model_file",
                         "aligned"),
    "offsets_overlap": ("llama", _overlap, "bad_model_file", "overlap"),
    "data_shorter_than_type": ("llama", _short_data, "bad_model_file", "runs past the end"),
    "unknown_tensor_type": ("llama", _tensor("blk.0.attn_q.weight", ggml_type=99), "unsupported", "ggml type 99"),
    "unsupported_tensor_type": ("llama", _tensor("blk.0.attn_q.weight", ggml_type=20), "unsupported", "IQ4_NL"),
    "type_changes_size": ("llama", _tensor("blk.0.attn_q.weight", ggml_type=0), "bad_model_file", ""),
    "duplicate_tensor": ("llama", _dup_tensor, "bad_model_file", "appears twice"),
    "duplicate_key": ("llama", _dup_key, "bad_model_file", "appears twice"),
    "tensor_count_2e63": ("llama", _do(lambda d: setattr(d, "n_tensors", 2**63)), "bad_model_file", "tensors"),
    "kv_count_2e64": ("llama", _do(lambda d: setattr(d, "n_kv", 2**64 - 1)), "bad_model_file", "metadata entries"),
    "token_count_lies": ("llama", _do(lambda d: setattr(d.kv("tokenizer.ggml.tokens"), "value",
                                                        (STR, d.kv("tokenizer.ggml.tokens").value[1], 2**40))),
                         "bad_model_file", "claims"),
    "nested_arrays_1e6": ("llama", _nested, "bad_model_file", ""),
    "vocab_shorter_than_embeddings": ("llama", _vocab_short, "bad_model_file", "tokens"),
    "vocab_duplicate_token": ("llama", _vocab_dup, "bad_model_file", "duplicate"),
    "vocab_invalid_utf8": ("gemma3", _bad_utf8, "bad_model_file", "not valid UTF-8"),
    "vocab_byte_token_bad_text": ("gemma3", _byte_token, "bad_model_file", "byte token"),
    "scores_wrong_length": ("gemma3", _do(lambda d: setattr(d.kv("tokenizer.ggml.scores"), "value",
                                                            (F32, d.kv("tokenizer.ggml.scores").value[1][:5]))),
                            "bad_model_file", "scores"),
    "bos_id_2e32": ("llama", _set("tokenizer.ggml.bos_token_id", U64, 2**32), "ok", ""),
    "alignment_3": ("llama", _set("general.alignment", U32, 3), "bad_model_file", "power of two"),
    "version_1": ("llama", _do(lambda d: setattr(d, "version", 1)), "bad_model_file", "version 1"),
    "template_ssti": ("llama", _set("tokenizer.chat_template", STR,
                                    "{{ ''.__class__.__mro__[1].__subclasses__() }}"), "ok", ""),
}


def _swap(d: Doc, a: str, b: str) -> None:
    ta = next(t for t in d.tensors if t.name == a)
    tb = next(t for t in d.tensors if t.name == b)
    ta.name, tb.name = b, a


def write_corpus(folder: Path, work: Path) -> dict[str, dict]:
    """Write every CORPUS case to folder/NAME.gguf; returns the manifest {name: {kind, match}}."""
    import copy
    seeds = corpus_seeds(work)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, (seed, edit, kind, match) in CORPUS.items():
        d = copy.deepcopy(seeds[seed])
        edit(d)
        d.write(folder / f"{name}.gguf")
        manifest[name] = {"kind": kind, "match": match}
    return manifest
