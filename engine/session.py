"""Save and restore a conversation: tokens, the KV cache cells that hold them, the sampler's RNG.

    save(model, path, tokens=..., sampler=..., extra=...)     -> None
    load(model, path)                                         -> SessionInfo

A session file (engine/session_file.py: JSON header + safetensors payload + sha256) keeps only the
*used* cells of each KV cache (slot, position, sequence ids, and their K/V rows per layer), so its
size grows with the conversation, not with the context the model was loaded with. `tokens` is the
caller's history; the cells hold a prefix of it (the last sampled token was never evaluated), and on
restore the runtime's prompt reuse evaluates only what the cache lacks.

load() validates everything (file, model identity, KV type, context, every tensor's shape and dtype,
slots, positions, token ids) before it touches the model: a bad file leaves the model as it was.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import BadRequest, BadSessionFile
from engine.sampling import Sampler
from engine.session_file import MAX_HEADER, PREAMBLE, read_session_file, write_session_file

FORMAT = "cellar-session"
_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "u8": torch.uint8}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


@dataclass
class CacheCells:
    """One KV cache's cells of one sequence. A model may hold several caches (global and sliding-window
    layers); `layers` names the model layers whose K/V live in this one, in order."""
    name: str
    layers: list[int]
    n_cells: int                          # cells the cache has (its capacity)
    idx: torch.Tensor                     # int64 [n]  slots in use
    pos: torch.Tensor                     # int64 [n]  token position held by each slot
    seq: torch.Tensor                     # int64 [n]  bitmask of the sequence ids sharing each slot
    k: list[torch.Tensor] = field(default_factory=list)   # per layer [n, k_width]
    v: list[torch.Tensor] = field(default_factory=list)   # per layer [n, v_width]
    shift: torch.Tensor | None = None     # int64 [n]  RoPE shift not yet applied to K (None: none)
    head: int = 0                         # where the next slot search starts (keeps new tokens' slots
                                          # where an uninterrupted run would put them)


@dataclass
class KVState:
    cached: list[int]                     # the tokens the cells hold, in position order
    caches: list[CacheCells]


@dataclass
class CacheLayout:
    name: str
    layers: list[int]
    n_cells: int
    k_width: int                          # elements per K row (bytes for a byte-packed KV type)
    v_width: int
    dtype: torch.dtype


@dataclass
class SessionInfo:
    tokens: list[int]
    sampler_state: dict | None
    extra: dict
    n_cached: int                         # tokens restored into the KV cache (a prefix of `tokens`)
    model_name: str
    file_bytes: int


# ---------------------------------------------------------------- model identity

_FINGERPRINTS: dict[tuple, str] = {}
_SAMPLES, _SAMPLE_BYTES = 16, 64 << 10


def model_fingerprint(g) -> str:
    """sha256 over the GGUF's header + metadata + tensor table bytes, its size, and 16 evenly spaced
    64 KiB samples of tensor data.

    The header bytes pin the architecture, hyperparameters, vocabulary and every tensor's name, type,
    shape and offset; the size pins the data length; the samples tell apart two files that share a
    header (a fine-tune or re-quantization with identical layout changes every block). It reads 2-7 MB
    instead of the whole 100-250 MB file, and is kept per (inode, size, mtime) so saves after the
    first cost nothing."""
    path = Path(g.path)
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, int(g.data_offset))
    fp = _FINGERPRINTS.get(key)
    if fp is not None:
        return fp
    h = hashlib.sha256(b"cellar-model-fingerprint-1\0")
    h.update(st.st_size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        left = int(g.data_offset)
        while left > 0:
            chunk = f.read(min(left, 8 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        span = max(st.st_size - int(g.data_offset) - _SAMPLE_BYTES, 0)
        for i in range(_SAMPLES):
            f.seek(int(g.data_offset) + span * i // max(_SAMPLES - 1, 1))
            h.update(f.read(_SAMPLE_BYTES))
    fp = h.hexdigest()
    _FINGERPRINTS[key] = fp
    return fp


def model_name(model) -> str:
    g = model.gguf
    name = g.get("general.name") if hasattr(g, "get") else None
    return f"{name} ({Path(g.path).name})" if name else Path(g.path).name


def _n_vocab(model) -> int:
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "n_vocab", None):
        return int(tok.n_vocab)
    return len(model.gguf.get("tokenizer.ggml.tokens") or ())


def _kv_type(model) -> str:
    return str(getattr(getattr(model, "opts", None), "kv_type", "f16"))


# ---------------------------------------------------------------- saving

def save(model, path, *, tokens: list[int], sampler=None, extra: dict | None = None, seq_id: int = 0) -> None:
    """Write `tokens`, the KV cells of `seq_id`, the sampler state and `extra` (plain JSON) to `path`,
    atomically. Raises CellarError with one line when the disk refuses (the previous file stays)."""
    layout = kv_layout(model)
    state = capture(model, seq_id)
    tokens = [int(t) for t in tokens]
    header: dict[str, Any] = {
        "format": FORMAT,
        "model": {"fingerprint": model_fingerprint(model.gguf), "name": model_name(model),
                  "arch": str(model.arch), "file_size": int(Path(model.gguf.path).stat().st_size)},
        "n_ctx": int(model.n_ctx), "kv_type": _kv_type(model), "seq_id": int(seq_id),
        "n_tokens": len(tokens), "n_cached": len(state.cached),
        "caches": [{"name": c.name, "layers": [int(x) for x in c.layers], "n_cells": int(c.n_cells),
                    "n_used": int(c.idx.numel()), "dtype": _DTYPE_NAMES[lay.dtype], "head": int(c.head)}
                   for c, lay in zip(state.caches, layout)],
        "sampler": sampler.get_state() if sampler is not None else None,
        "extra": dict(extra or {}),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tensors = {"tokens": torch.tensor(tokens, dtype=torch.int32),
               "cached": torch.tensor(state.cached, dtype=torch.int32)}
    for ci, c in enumerate(state.caches):
        tensors[f"c{ci}.idx"] = c.idx.to(torch.int32)
        tensors[f"c{ci}.pos"] = c.pos.to(torch.int32)
        tensors[f"c{ci}.seq"] = c.seq.to(torch.int64)
        tensors[f"c{ci}.shift"] = (c.shift if c.shift is not None else torch.zeros_like(c.idx)).to(torch.int64)
        for il, k, v in zip(c.layers, c.k, c.v):
            tensors[f"c{ci}.l{il}.k"] = k.detach().cpu()
            tensors[f"c{ci}.l{il}.v"] = v.detach().cpu()
    write_session_file(path, header, tensors)


# ---------------------------------------------------------------- loading

def load(model, path, *, seq_id: int = 0) -> SessionInfo:
    """Read and validate `path` against `model`, then restore its KV cells into `seq_id`."""
    path = Path(path)
    layout = kv_layout(model)
    header, tensors = read_session_file(path, max_bytes=_max_file_bytes(model, layout))
    info, state = _validate(model, layout, path, header, tensors)
    apply(model, seq_id, state)
    return info


def _max_file_bytes(model, layout: list[CacheLayout]) -> int:
    per_cell = lambda c: 24 + len(c.layers) * (c.k_width + c.v_width) * torch.empty(0, dtype=c.dtype).element_size()
    kv = sum(c.n_cells * per_cell(c) for c in layout)
    # + the cached tokens, a history of up to 4M tokens (it may have outgrown the context), and a
    # small safetensors entry per tensor
    n_tensors = 2 + sum(4 + 2 * len(c.layers) for c in layout)
    return PREAMBLE.size + MAX_HEADER + kv + 4 * int(model.n_ctx) + (16 << 20) + 256 * n_tensors


def _bad(path: Path, what: str) -> BadSessionFile:
    return BadSessionFile(f"{path.name}: {what}")


def _get(path: Path, d: dict, key: str, kind, what: str | None = None):
    v = d.get(key)
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise _bad(path, f"header field {what or key!r} is missing or has the wrong type; the file is corrupt")
    return v


def _tensor(path: Path, tensors: dict, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    t = tensors.get(name)
    if t is None:
        raise _bad(path, f"tensor {name!r} is missing; the file is corrupt")
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise _bad(path, f"tensor {name!r} is {str(t.dtype).removeprefix('torch.')} {list(t.shape)}, expected "
                         f"{str(dtype).removeprefix('torch.')} {list(shape)}; the file is corrupt")
    return t


def _validate(model, layout: list[CacheLayout], path: Path, header: dict, tensors: dict):
    if header.get("format") != FORMAT:
        raise _bad(path, "not a Cellar session (header format field)")
    m = _get(path, header, "model", dict)
    fp = _get(path, m, "fingerprint", str, "model.fingerprint")
    saved_name = str(m.get("name", "another model"))
    here = model_name(model)
    if fp != model_fingerprint(model.gguf):
        raise _bad(path, f"this session was saved with {saved_name}, not {here}; load that model to restore it")
    if m.get("arch") != str(model.arch):
        raise _bad(path, f"saved for architecture {m.get('arch')!r}, this model is {model.arch!r}")
    kv_type = _get(path, header, "kv_type", str)
    if kv_type != _kv_type(model):
        raise _bad(path, f"saved with KV type {kv_type}, the model is loaded with {_kv_type(model)}; "
                         f"load it with --kv-type {kv_type}")
    n_tokens = _get(path, header, "n_tokens", int)
    n_cached = _get(path, header, "n_cached", int)
    n_ctx = int(model.n_ctx)
    saved_ctx = _get(path, header, "n_ctx", int)
    if n_cached < 0 or n_tokens < 0:
        raise _bad(path, "negative token counts in the header; the file is corrupt")
    # a history longer than the context it was saved with went through a context shift and may go on
    # shifting; otherwise every token must fit, with room for one more
    need = max(n_cached, n_tokens if n_tokens <= saved_ctx else 0)
    if need > n_ctx:
        raise _bad(path, f"the session holds {need} tokens, more than this model's context of {n_ctx}; "
                         f"load the model with --ctx {need + 1} or more")
    tokens = _tensor(path, tensors, "tokens", torch.int32, (n_tokens,))
    cached = _tensor(path, tensors, "cached", torch.int32, (n_cached,))
    n_vocab = _n_vocab(model)
    for name, t in (("tokens", tokens), ("cached", cached)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_vocab):
            raise _bad(path, f"{name} hold ids outside this model's vocabulary of {n_vocab}; the file is corrupt")
    saved_seq = _get(path, header, "seq_id", int)
    if not 0 <= saved_seq < 63:
        raise _bad(path, f"sequence id {saved_seq} is out of range; the file is corrupt")
    caches_h = _get(path, header, "caches", list)
    if len(caches_h) != len(layout):
        raise _bad(path, f"the session has {len(caches_h)} KV caches, this model has {len(layout)}; "
                         "the file is corrupt")
    known = {"tokens", "cached"}
    caches: list[CacheCells] = []
    for ci, (ch, lay) in enumerate(zip(caches_h, layout)):
        caches.append(_validate_cache(path, ci, ch, lay, tensors, n_ctx, n_cached, saved_seq))
        known |= {f"c{ci}.idx", f"c{ci}.pos", f"c{ci}.seq", f"c{ci}.shift"}
        known |= {f"c{ci}.l{il}.{kv}" for il in lay.layers for kv in "kv"}
    stray = sorted(set(tensors) - known)
    if stray:
        raise _bad(path, f"unexpected tensor {stray[0][:60]!r}; the file is corrupt")
    sampler = header.get("sampler")
    if sampler is not None:
        try:
            Sampler().set_state(sampler)
        except (BadRequest, AttributeError):
            raise _bad(path, "the sampler state is malformed; the file is corrupt") from None
    extra = header.get("extra", {})
    if not isinstance(extra, dict):
        raise _bad(path, "header field 'extra' is not an object; the file is corrupt")
    info = SessionInfo(tokens=tokens.tolist(), sampler_state=sampler, extra=extra, n_cached=n_cached,
                       model_name=saved_name, file_bytes=path.stat().st_size)
    return info, KVState(cached=cached.tolist(), caches=caches)


def _validate_cache(path: Path, ci: int, ch: Any, lay: CacheLayout, tensors: dict, n_ctx: int,
                    n_cached: int, saved_seq: int) -> CacheCells:
    if not isinstance(ch, dict):
        raise _bad(path, f"cache {ci} header is not an object; the file is corrupt")
    if ch.get("name") != lay.name or ch.get("layers") != list(lay.layers):
        raise _bad(path, f"cache {ci} is {ch.get('name')!r}, this model's is {lay.name!r} (other layers); "
                         "the file is corrupt")
    n = _get(path, ch, "n_used", int, f"caches[{ci}].n_used")
    if not 0 <= n <= min(lay.n_cells, n_cached):
        if n > lay.n_cells:
            raise _bad(path, f"cache {lay.name!r} uses {n} cells, this model's has {lay.n_cells}; load the "
                             f"model with a larger --ctx")
        raise _bad(path, f"cache {lay.name!r} claims {n} used cells for {n_cached} cached tokens; the file is corrupt")
    if ch.get("dtype") != _DTYPE_NAMES.get(lay.dtype):
        raise _bad(path, f"cache {lay.name!r} holds {ch.get('dtype')} rows, this model's holds "
                         f"{_DTYPE_NAMES.get(lay.dtype)}; the file is corrupt")
    idx = _tensor(path, tensors, f"c{ci}.idx", torch.int32, (n,)).long()
    pos = _tensor(path, tensors, f"c{ci}.pos", torch.int32, (n,)).long()
    seq = _tensor(path, tensors, f"c{ci}.seq", torch.int64, (n,))
    shift = _tensor(path, tensors, f"c{ci}.shift", torch.int64, (n,))
    head = _get(path, ch, "head", int, f"caches[{ci}].head")
    if not 0 <= head < max(lay.n_cells, 1):
        raise _bad(path, f"cache {lay.name!r} starts its slot search at {head}, beyond its {lay.n_cells} cells; "
                         "load the model with the --ctx it was saved with")
    if n:
        if int(idx.min()) < 0 or int(idx.max()) >= lay.n_cells:
            raise _bad(path, f"cache {lay.name!r} names cell {int(idx.max())}, beyond its {lay.n_cells} cells; "
                             "load the model with the --ctx it was saved with")
        if torch.unique(idx).numel() != n:
            raise _bad(path, f"cache {lay.name!r} names a cell twice; the file is corrupt")
        if int(pos.min()) < 0 or int(pos.max()) >= n_ctx:
            raise _bad(path, f"cache {lay.name!r} holds positions outside 0..{n_ctx - 1}; the file is corrupt")
        if int(shift.abs().max()) >= n_ctx:
            raise _bad(path, f"cache {lay.name!r} holds a pending shift of {int(shift.abs().max())} positions, "
                             "more than the context; the file is corrupt")
        if bool((((seq >> saved_seq) & 1) == 0).any()):
            raise _bad(path, f"cache {lay.name!r} holds a cell outside the saved sequence; the file is corrupt")
    ks = [_tensor(path, tensors, f"c{ci}.l{il}.k", lay.dtype, (n, lay.k_width)) for il in lay.layers]
    vs = [_tensor(path, tensors, f"c{ci}.l{il}.v", lay.dtype, (n, lay.v_width)) for il in lay.layers]
    for il, k, v in zip(lay.layers, ks, vs):
        if not (_all_finite(k) and _all_finite(v)):
            raise _bad(path, f"layer {il} holds non-finite K/V values; the file is corrupt")
    return CacheCells(lay.name, list(lay.layers), lay.n_cells, idx, pos, seq, ks, vs, shift, head)


_EXP_BITS = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def _all_finite(t: torch.Tensor) -> bool:
    """No inf or NaN, by exponent bits in numpy (single-threaded: torch's threaded isfinite on f16
    is many times slower on a busy machine)."""
    if t.dtype in _EXP_BITS:
        m = np.int16(_EXP_BITS[t.dtype])
        return not bool(((t.view(torch.int16).numpy() & m) == m).any())
    if t.dtype.is_floating_point:
        return bool(np.isfinite(t.numpy()).all())
    return True


# ---------------------------------------------------------------- binding to the runtime
#
# What this module needs from runtime.Model (three methods; all plain torch, no file I/O):
#   kv_layout() -> list[CacheLayout | dict]     one entry per KV cache, stable order; for q8_0 the
#                                               dtype is uint8 and the widths are bytes per row
#   export_kv(seq_id) -> KVState | dict         copies of seq_id's used cells in every cache (slot,
#                                               position, seq-id bitmask, K/V rows per layer) and the
#                                               tokens they hold; must not change the model
#   import_kv(seq_id, state: KVState) -> None   drop seq_id's cells, write these into the named slots,
#                                               set cached_tokens(seq_id) = state.cached; called only
#                                               after the whole file has been validated
# engine/session_kv.py implements export/import on an engine.kv_cache.KVMemory for them to delegate to.

def kv_layout(model) -> list[CacheLayout]:
    """The model's KV caches: names, layers, capacity, row widths and dtype."""
    return [CacheLayout(**d) if isinstance(d, dict) else d for d in model.kv_layout()]


def capture(model, seq_id: int) -> KVState:
    """The used cells of `seq_id` in every cache, copied out of the model."""
    s = model.export_kv(seq_id)
    if isinstance(s, KVState):
        return s
    return KVState(cached=list(s["cached"]), caches=[c if isinstance(c, CacheCells) else CacheCells(**c)
                                                      for c in s["caches"]])


def apply(model, seq_id: int, state: KVState) -> None:
    """Replace `seq_id`'s cells with `state` (already validated against the model's layout). The cells
    belong to `seq_id` alone here, whichever sequence they were saved from."""
    for c in state.caches:
        c.seq = torch.full_like(c.seq, 1 << seq_id)
    model.import_kv(seq_id, state)
