"""Running a model: load, evaluate tokens through the KV cache, generate.

    model = Model.load(path, LoadOptions(ctx=4096, threads=2))
    r = model.generate(model.tokenizer.encode("Hello", add_special=True), 64, Sampler(params))

At load every buffer a reply needs is allocated and touched: the weights' pages (mapped in, as
llama.cpp maps them), the KV caches, the dequantization scratch, and (with warmup) one full ubatch
through one layer and the output head, after which the cache is cleared: the activations and attention
buffers of the memory plan's peak are reached at load, not by the first long prompt.
Prompts are evaluated in ubatches; a prompt that shares a prefix with what its sequence already
holds evaluates only the rest. When the context is full, the oldest half of the tokens after the
first n_keep is dropped and the rest moved down (K re-rotated): generation never stops for room.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from engine import decode_native, kernels
from engine.errors import BadRequest, Cancelled
from engine.gguf import GGUFFile
from engine.kv_cache import KV_TYPES, MAX_SEQ, KVMemory, StepMasks
from engine.models import model_class
from engine.models.base import Step, rms_norm
from engine.offload_model import attach
from engine.ops import Scratch, linear
from engine.pages import PageWork
from engine.prefill import attach_buffers
from engine.tokenizer import load_tokenizer

Progress = Callable[[float, str], None]
WARMUP_LAYERS = 1


@dataclass
class LoadOptions:
    ctx: int = 4096
    batch: int = 512
    ubatch: int = 512
    threads: int | None = None
    mmap: bool = True
    mlock: bool = False
    gpu_layers: int = 0
    kv_type: str = "f16"
    warmup: bool = True
    offload_device: str = "cuda"      # "cpu": the offload path with the CPU as the device (tests)
    offload_stream: bool | None = None    # stream host layers for prefill (None: when gpu_layers > 0)
    n_seq: int = 1                    # sequences decoded together (server slots): sizes the SWA cache


@dataclass
class GenResult:
    tokens: list[int]
    text: str
    prompt_tokens: int
    n_eval: int                       # tokens actually evaluated (prompt reuse shows here)
    stop_reason: str                  # "length" | "eos" | "stop" | "cancelled"
    t_prompt_s: float
    t_gen_s: float
    ttft_s: float
    n_shift: int = 0                  # context shifts during this call
    extra: dict = field(default_factory=dict)


class ContextFull(Exception):
    """Internal: a cache has no cells left for the ubatch."""


def _check_options(opts: LoadOptions) -> None:
    if opts.kv_type not in KV_TYPES:
        raise BadRequest(f"KV type {opts.kv_type!r} is not supported; choose one of {', '.join(KV_TYPES)}")
    if opts.ctx < 0 or opts.ubatch < 1 or opts.batch < 1:
        raise BadRequest(f"ctx must be 0 or more and batch/ubatch 1 or more (got ctx={opts.ctx}, "
                         f"batch={opts.batch}, ubatch={opts.ubatch})")
    if not 1 <= opts.n_seq <= MAX_SEQ - 1:
        raise BadRequest(f"{opts.n_seq} parallel sequences asked; choose 1 to {MAX_SEQ - 1}")
    if opts.threads is not None and opts.threads < 1:
        raise BadRequest(f"threads must be 1 or more (got {opts.threads})")
    if opts.gpu_layers < 0 or opts.offload_device not in ("cuda", "cpu"):
        raise BadRequest(f"gpu layers must be 0 or more on device cuda or cpu (got {opts.gpu_layers} on "
                         f"{opts.offload_device!r})")


class Model:
    def __init__(self, gguf: GGUFFile, opts: LoadOptions, progress: Progress | None = None):
        pages = PageWork()
        try:
            for _name, stage in self._stages(gguf, opts, progress, pages):
                stage()
        except BaseException:
            pages.wait(quiet=True)    # nothing touches the file's mapping or the buffers once this returns
            raise

    @classmethod
    def staged(cls, gguf: GGUFFile, opts: LoadOptions) -> tuple["Model", list[tuple[str, Callable[[], None]]]]:
        """A model not yet built and the stages that build it, to be run in order (tools/load_profile.py
        measures each)."""
        m = cls.__new__(cls)
        return m, m._stages(gguf, opts, None, PageWork())

    def _stages(self, gguf: GGUFFile, opts: LoadOptions, progress: Progress | None, pages: PageWork):
        """The main thread allocates the KV cache and the buffers, then builds the tokenizer (holding the
        GIL) while a PageWork thread zero-fills them (GIL-free calls): the two overlap on two cores. The
        last stages need both done."""
        report = progress or (lambda f, s: None)
        # torch on one thread, as every step runs it: the load's fills (the KV cache, the buffers) on an
        # OpenMP team waited a scheduler slice per call for a thread whose core was busy (SmolLM2's 60
        # K/V zero-fills: 0.04 s idle, 0.41-0.45 s with the other core taken)
        torch.set_num_threads(1)
        self.gguf, self.opts, self.arch = gguf, opts, gguf.arch
        self._cached: dict[int, list[int]] = {}
        self._n_keep: dict[int, int] = {}
        cls = model_class(self.arch)

        def weights() -> None:
            self.net = cls(gguf, lambda f, s: report(0.5 * f, s))
            self.n_ctx = opts.ctx if opts.ctx > 0 else self.net.hp.n_ctx_train
            self.n_ubatch = max(1, min(opts.ubatch, opts.batch, self.n_ctx))

        def kv_cache() -> None:
            report(0.55, "allocating the KV cache")
            self.kv: KVMemory = self.net.make_kv(self.n_ctx, self.n_ubatch, opts.kv_type, opts.n_seq, pages)

        def scratch() -> None:
            self.scratch = Scratch.for_weights(self.net.matrices(), pages)
            attach_buffers(self.scratch, self.net.hp, self.n_ubatch, pages)   # the batched layer's activations

        def tokenizer() -> None:
            report(0.6, "building the tokenizer")
            self.tokenizer = load_tokenizer(gguf)

        def buffers() -> None:
            pages.wait()
            self.offload, self.warnings = attach(self.net, self.kv, opts)

        def warmup() -> None:
            if opts.warmup:
                report(0.85, "warming up")
                self._warmup()
            report(1.0, "ready")

        return [("weights", weights), ("kv cache", kv_cache), ("scratch", scratch), ("tokenizer", tokenizer),
                ("pages", buffers), ("warmup", warmup)]

    @classmethod
    def load(cls, path, opts: LoadOptions | None = None, progress: Progress | None = None) -> "Model":
        opts = opts or LoadOptions()
        _check_options(opts)
        if opts.threads:
            torch.set_num_threads(opts.threads)
            kernels.set_threads(opts.threads)
        if progress:
            progress(0.0, "opening")
        g = cls.open_file(path, opts)
        try:
            return cls(g, opts, progress)
        except BaseException:
            g.close()
            raise

    @staticmethod
    def open_file(path, opts: LoadOptions) -> GGUFFile:
        """The model file as Model.load opens it: mapped (unless no-mmap) and its pages faulted in now (not
        by the first prompt; MAP_POPULATE, as llama.cpp maps a model), except where offload uploads layers
        to the GPU. (On the page thread instead, the populate's hold on the process's memory map stalled
        the tokenizer build's own mappings: no faster.)"""
        return GGUFFile.open(Path(path), mmap=opts.mmap, mlock=opts.mlock, populate=opts.gpu_layers == 0)

    def _warmup(self) -> None:
        """Reach the memory plan's peak now, so a first long prompt finds little memory gone: one full
        ubatch through WARMUP_LAYERS layers (every layer's activations and attention use buffers of the
        same sizes, freed and reused layer after layer; attention's K/V f32 buffers are made at their
        full size), then the output head on its last row, at a fraction of a full pass's cost (a 512-token
        prefill). What it does not reach is the free blocks the allocator keeps as a pass goes through all
        the layers: SmolLM2 ctx 2048, peak RSS +4% after the first full ubatch (docs/memory.md). The
        offload path runs the whole ubatch (its streaming slots and device buffers fill layer by layer)."""
        bos = self.tokenizer.bos_id if (self.tokenizer.bos_id or -1) >= 0 else 0
        ids = [bos] * self.n_ubatch
        if self.offload is not None:
            self.eval(ids)
            self.reset()
            return
        net = self.net
        pos = np.arange(len(ids), dtype=np.int64)
        slots = self.kv.find_slot(pos, 0)
        n_kv = {c.name: c.n_kv() for c in self.kv.caches}
        step = Step(ids, pos, 0, {c.name: s for c, s in zip(self.kv.caches, slots)}, n_kv,
                    StepMasks({c.name: c.cell_mask(pos, 0, n_kv[c.name]) for c in self.kv.caches}))
        # global layers first (their cache is the largest), then the others
        layers = sorted(range(net.hp.n_layer), key=lambda i: -self.kv.cache_of(i).n_cells)[:WARMUP_LAYERS]
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                x = net.embed(ids)
                for il in layers:
                    x = net.block(il, x, net.layers[il], step, self.kv, self.scratch)
                x = rms_norm(x[-1:], net.output_norm, net.hp.eps)
                net.logits(linear(x, net.output)[0])
        finally:
            self.reset()

    # ---- state -------------------------------------------------------------------------------------
    def cached_tokens(self, seq_id: int = 0) -> list[int]:
        return list(self._cached.get(seq_id, []))

    def reset(self, seq_id: int | None = None) -> None:
        if seq_id is None:
            self.kv.clear()
            self._cached.clear()
        else:
            self.kv.seq_rm(seq_id)
            self._cached.pop(seq_id, None)

    def kv_snapshot(self) -> dict:
        snap = self.kv.snapshot()
        snap["n_ctx"] = self.n_ctx
        snap["kv_type"] = self.opts.kv_type
        snap["bytes"] = self.kv.nbytes
        snap["sequences"] = {s: len(t) for s, t in self._cached.items() if t}
        return snap

    def memory_breakdown(self) -> dict:
        """Bytes this model holds, by concern (weights are the GGUF mapping's tensor data)."""
        return {"weights": self.gguf.data_nbytes, "kv": self.kv.nbytes, "compute": self.scratch.nbytes}

    def close(self) -> None:
        if self.offload is not None:
            self.offload.close()
            self.offload = None
        self.kv = None
        self.net = None
        self.gguf.close()

    # ---- evaluation --------------------------------------------------------------------------------
    def _step(self, ids: list[int], pos0: int, seq_id: int, logits: bool = True) -> torch.Tensor:
        """One ubatch at positions pos0.. of seq_id; logits of its last token (logits=False: none, the
        ubatch only fills the cache: a long prompt's ubatches but the last)."""
        pos = np.arange(pos0, pos0 + len(ids), dtype=np.int64)
        slots = self.kv.find_slot(pos, seq_id)
        if slots is None:
            raise ContextFull
        self.kv.apply_shift(self.net.rope_shift)
        names = [c.name for c in self.kv.caches]
        n_kv = {c.name: c.n_kv() for c in self.kv.caches}
        masks = StepMasks({c.name: c.cell_mask(pos, seq_id, n_kv[c.name]) for c in self.kv.caches})
        step = Step(ids, pos, seq_id, dict(zip(names, slots)), n_kv, masks, out_rows=None if logits else [])
        # torch stays on one thread: the native kernels and ops' matmul split share the work between
        # threads that join when scheduled, where an OpenMP team waits for all of its threads
        torch.set_num_threads(1)
        with torch.inference_mode():
            out = self.net.forward(step, self.kv, self.scratch)
        self._cached.setdefault(seq_id, []).extend(ids)
        return out

    def eval_batch(self, batch: Sequence[tuple[int, Sequence[int]]]) -> torch.Tensor:
        """One forward step over tokens of several sequences. batch = [(seq_id, ids), ...] with distinct
        seq ids; each sequence's ids go after what it holds. -> f32 logits [len(batch), n_vocab], row i
        for batch[i]'s last token. Each sequence attends over its own cells only, in position order
        (causal, and within the window on sliding-window caches), so its numbers do not depend on what
        else the cache holds or on the batch it runs in. Raises ContextFull, with nothing claimed, when a
        cache has no room for the whole step."""
        if not batch:
            raise BadRequest("nothing to evaluate: the batch is empty")
        seqs = [int(s) for s, _ in batch]
        if len(set(seqs)) != len(seqs):
            raise BadRequest(f"a batch names a sequence twice ({seqs}); give each sequence once")
        ids: list[int] = []
        pos: list[np.ndarray] = []
        seq: list[np.ndarray] = []
        out_rows: list[int] = []
        for s, toks in batch:
            toks = [int(t) for t in toks]
            if not toks:
                raise BadRequest(f"sequence {s} has no tokens in the batch; give at least one")
            self._check_tokens(toks)
            n_past = len(self._cached.get(s, []))
            if n_past + len(toks) > self.n_ctx:
                raise BadRequest(f"sequence {s}: {len(toks)} tokens do not fit in the context of {self.n_ctx} "
                                 f"after {n_past} cached ones; raise --ctx")
            ids += toks
            pos.append(np.arange(n_past, n_past + len(toks), dtype=np.int64))
            seq.append(np.full(len(toks), int(s), dtype=np.int64))
            out_rows.append(len(ids) - 1)
        if len(ids) > self.n_ubatch:
            raise BadRequest(f"a batch of {len(ids)} tokens is larger than the ubatch of {self.n_ubatch}; "
                             "split it")
        p, sq = np.concatenate(pos), np.concatenate(seq)
        slots = self.kv.find_slot(p, sq)
        if slots is None:
            raise ContextFull
        self.kv.apply_shift(self.net.rope_shift)
        names = [c.name for c in self.kv.caches]
        groups: dict[str, list] = {name: [] for name in names}
        row = 0
        for (s, toks), pp in zip(batch, pos):
            for c in self.kv.caches:
                cells = c.seq_cells(int(s), int(pp[0]))
                groups[c.name].append((row, row + len(pp), torch.from_numpy(cells), c.mask_cells(pp, cells)))
            row += len(pp)
        n_kv = {c.name: c.n_kv() for c in self.kv.caches}
        step = Step(ids, p, sq, dict(zip(names, slots)), n_kv, {}, out_rows=out_rows, groups=groups)
        # torch on one thread, as in _step (the kernels and ops' matmul split share out the work); a
        # fixed count also keeps a chunk's matmul numbers the same from one step to the next
        torch.set_num_threads(1)
        with torch.inference_mode():
            singles = [i for i, (_, toks) in enumerate(batch) if len(toks) == 1]
            if 0 < len(singles) < len(batch) and self.net.offload is None and decode_native.enabled():
                # one-token sequences run the native decode layer (as they would alone), the prompts
                # beside them the batched torch path: two forwards over the slots claimed above
                logits = torch.empty(len(batch), self.net.hp.n_vocab or self.tokenizer.n_vocab)
                for part in (singles, [i for i in range(len(batch)) if len(batch[i][1]) > 1]):
                    logits[part] = self.net.forward(_sub_step(step, part), self.kv, self.scratch)
            else:
                logits = self.net.forward(step, self.kv, self.scratch)
        for s, toks in batch:
            self._cached.setdefault(int(s), []).extend(int(t) for t in toks)
        return logits

    def _evaluate(self, ids: Sequence[int], seq_id: int, should_cancel=None) -> torch.Tensor | None:
        """Append ids to seq_id in ubatches; None when cancelled between ubatches."""
        logits = None
        for i in range(0, len(ids), self.n_ubatch):
            if i and should_cancel is not None and should_cancel():
                return None
            logits = self._step(list(ids[i:i + self.n_ubatch]), len(self._cached.get(seq_id, [])), seq_id,
                                logits=i + self.n_ubatch >= len(ids))
        return logits

    def eval(self, tokens: Sequence[int], seq_id: int = 0, pos0: int | None = None) -> torch.Tensor:
        """Evaluate tokens after what seq_id holds (or from pos0, dropping what follows); last logits."""
        if not tokens:
            raise BadRequest("nothing to evaluate: the token list is empty")
        self._check_tokens(tokens)
        if pos0 is not None:
            self._truncate(seq_id, pos0)
        if len(self._cached.get(seq_id, [])) + len(tokens) > self.n_ctx:
            raise BadRequest(f"{len(tokens)} tokens do not fit in the context of {self.n_ctx} after "
                             f"{len(self._cached.get(seq_id, []))} cached ones; raise --ctx")
        try:
            return self._evaluate(tokens, seq_id)
        except ContextFull:
            raise BadRequest(f"the KV cache has no room for {len(tokens)} more tokens; raise --ctx "
                             "or reset other sequences") from None

    def _check_tokens(self, tokens: Sequence[int]) -> None:
        n = self.net.hp.n_vocab or self.tokenizer.n_vocab
        bad = [t for t in tokens if not 0 <= int(t) < n]
        if bad:
            raise BadRequest(f"token id {bad[0]} is outside the vocabulary (0..{n - 1})")

    def _truncate(self, seq_id: int, n: int) -> None:
        self.kv.seq_rm(seq_id, n, -1)
        self._cached[seq_id] = self._cached.get(seq_id, [])[:n]

    def _reusable_prefix(self, prompt: list[int], seq_id: int) -> int:
        """How many leading prompt tokens seq_id's cells can keep: the common prefix, less one when the
        whole prompt is cached (its last token is evaluated again for logits), and 0 when a sliding
        window cache no longer holds the window that the next token needs."""
        cached = self._cached.get(seq_id, [])
        n = 0
        for a, b in zip(cached, prompt):
            if a != b:
                break
            n += 1
        n = min(n, len(prompt) - 1)
        for c in self.kv.caches:
            if c.swa_window and n > 0 and c.seq_pos_min(seq_id) > max(0, n - c.swa_window + 1):
                return 0
        return max(n, 0)

    def context_shift(self, seq_id: int, n_keep: int) -> int:
        """Drop the oldest half of seq_id's tokens after the first n_keep and move the rest down."""
        n_past = len(self._cached.get(seq_id, []))
        n_keep = min(max(n_keep, 0), n_past)
        n_discard = (n_past - n_keep) // 2
        if n_discard < 1:
            raise BadRequest(f"the context of {self.n_ctx} tokens is full and cannot shift: the {n_keep} kept "
                             "tokens fill it; raise --ctx or keep fewer tokens")
        self.kv.seq_rm(seq_id, n_keep, n_keep + n_discard)
        self.kv.seq_add(seq_id, n_keep + n_discard, n_past, -n_discard)
        cached = self._cached[seq_id]
        self._cached[seq_id] = cached[:n_keep] + cached[n_keep + n_discard:]
        return n_discard

    # ---- generation --------------------------------------------------------------------------------
    def generate(self, prompt_tokens: Sequence[int], max_tokens: int, sampler, *, seq_id: int = 0,
                 stop: Sequence[str] = (), on_token: Callable[[int, str], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None, n_keep: int | None = None) -> GenResult:
        """Evaluate the prompt (reusing seq_id's cached prefix), then sample up to max_tokens.

        n_keep: tokens at the start kept through a context shift (default: the BOS token if the prompt
        starts with one)."""
        prompt = [int(t) for t in prompt_tokens]
        if not prompt:
            raise BadRequest("the prompt is empty; give at least one token")
        if max_tokens < 0:
            raise BadRequest(f"max_tokens must be 0 or more (got {max_tokens})")
        self._check_tokens(prompt)
        if len(prompt) >= self.n_ctx:
            raise BadRequest(f"the prompt has {len(prompt)} tokens and the context holds {self.n_ctx}; "
                             "shorten the prompt or raise --ctx")
        tok = self.tokenizer
        if n_keep is None:
            n_keep = 1 if tok.bos_id is not None and prompt[0] == tok.bos_id else 0
        self._n_keep[seq_id] = n_keep
        t0 = time.perf_counter()
        n = self._reusable_prefix(prompt, seq_id)
        self._truncate(seq_id, n)
        logits = self._evaluate(prompt[n:], seq_id, should_cancel)
        n_eval = len(prompt) - n
        t_prompt = time.perf_counter() - t0
        res = GenResult([], "", len(prompt), n_eval, "length", t_prompt, 0.0, 0.0)
        if logits is None:
            res.stop_reason = "cancelled"
            return res
        history = list(prompt)
        out = _TextOut(tok.stream_decoder(), stop, on_token)
        t1 = time.perf_counter()
        for i in range(max_tokens):
            t = sampler.sample(logits, history)
            if i == 0:
                res.ttft_s = time.perf_counter() - t0
            if tok.is_eog(t):
                res.stop_reason = "eos"
                break
            res.tokens.append(t)
            history.append(t)
            if out.push(t):
                res.stop_reason = "stop"
                break
            if i == max_tokens - 1:
                break
            if should_cancel is not None and should_cancel():
                res.stop_reason = "cancelled"
                break
            logits = self._decode(t, seq_id, res)
        res.text = out.finish(res.stop_reason == "stop")
        res.t_gen_s = time.perf_counter() - t1
        res.n_eval += len(res.tokens) - (1 if res.tokens and res.stop_reason in ("length", "stop", "cancelled")
                                         else 0)
        return res

    def _decode(self, t: int, seq_id: int, res: GenResult) -> torch.Tensor:
        if len(self._cached.get(seq_id, [])) >= self.n_ctx:
            self.context_shift(seq_id, self._n_keep.get(seq_id, 0))
            res.n_shift += 1
        try:
            return self._step([t], len(self._cached[seq_id]), seq_id)
        except ContextFull:                 # other sequences fill the cache: make room in this one
            self.context_shift(seq_id, self._n_keep.get(seq_id, 0))
            res.n_shift += 1
            try:
                return self._step([t], len(self._cached[seq_id]), seq_id)
            except ContextFull:
                raise BadRequest(f"the KV cache of {self.n_ctx} cells is full with other sequences; "
                                 "reset some or raise --ctx") from None

    # ---- session hooks (engine/session.py) ---------------------------------------------------------
    def kv_layout(self) -> list[dict]:
        return [{"name": c.name, "layers": list(c.layers), "n_cells": c.n_cells,
                 "k_width": c.k[c.layers[0]].shape[1], "v_width": c.v[c.layers[0]].shape[1], "dtype": c.dtype}
                for c in self.kv.caches]

    def export_kv(self, seq_id: int) -> dict:
        """Copies of seq_id's used cells in every cache and the tokens they hold."""
        self.kv.apply_shift(self.net.rope_shift)
        caches = []
        bit = 1 << seq_id
        for c in self.kv.caches:
            cells = np.flatnonzero((c.seq & bit) != 0)
            idx = torch.from_numpy(cells)
            caches.append({"name": c.name, "layers": list(c.layers), "n_cells": c.n_cells, "idx": idx,
                           "pos": torch.from_numpy(c.pos[cells].copy()), "seq": torch.from_numpy(c.seq[cells].copy()),
                           "k": [_rows(c.k[il], idx) for il in c.layers],
                           "v": [_rows(c.v[il], idx) for il in c.layers]})
        return {"cached": self.cached_tokens(seq_id), "caches": caches}

    def import_kv(self, seq_id: int, state) -> None:
        """Replace seq_id's cells with the saved ones: in their saved slots when those are free, else
        in free cells (sharing cells with other sequences is not restored)."""
        self.reset(seq_id)
        bit = 1 << seq_id
        for c, cc in zip(self.kv.caches, state.caches):
            slots = cc.idx.numpy().astype(np.int64)
            if len(slots) and (c.seq[slots] != 0).any():
                free = np.flatnonzero(c.seq == 0)
                if len(free) < len(slots):
                    raise BadRequest(f"the {c.name} KV cache has {len(free)} free cells and the session needs "
                                     f"{len(slots)}; reset other sequences or raise --ctx")
                slots = free[:len(slots)]
            c.pos[slots] = cc.pos.numpy()
            c.seq[slots] = bit
            c.shift[slots] = 0
            idx = torch.from_numpy(slots)
            for il, k, v in zip(cc.layers, cc.k, cc.v):
                at = idx.to(c.k[il].device)             # offload: a resident layer's rows are on the GPU
                c.k[il].index_copy_(0, at, k.to(c.k[il].device, c.dtype))
                c.v[il].index_copy_(0, at, v.to(c.v[il].device, c.dtype))
            if len(slots):
                c.head = (int(slots.max()) + 1) % c.n_cells
        self._cached[seq_id] = list(state.cached)


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows idx of a layer's K or V, as a host copy (the rows may be on the offload device)."""
    return t.index_select(0, idx.to(t.device)).cpu()


class _TextOut:
    """Streams decoded text to on_token, holding back any tail that could begin a stop string."""

    def __init__(self, decoder, stop: Sequence[str], on_token):
        self.decoder, self.stop, self.on_token = decoder, [s for s in stop if s], on_token
        self.text = ""
        self.sent = 0
        self.last = -1

    def push(self, t: int) -> bool:
        """Add token t; True when a stop string has appeared (the text is cut before it)."""
        self.last = t
        self.text += self.decoder.push(t)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self._emit(t, len(self.text))
            return True
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        self._emit(t, len(self.text) - hold)
        return False

    def _emit(self, t: int, upto: int) -> None:
        piece = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        if self.on_token is not None:
            self.on_token(t, piece)

    def finish(self, stopped: bool) -> str:
        """The whole text; what was held back (or left in the decoder) goes out with the last token."""
        if not stopped:
            self.text += self.decoder.flush()
            if len(self.text) > self.sent:
                self._emit(self.last, len(self.text))
        return self.text


def _sub_step(step: Step, entries: list[int]) -> Step:
    """The rows of a batched step (Model.eval_batch) that belong to the sequences at `entries` (indices
    into the batch, in order), with their claimed slots, cells and masks."""
    names = list(step.groups)
    bounds = [(g[0], g[1]) for g in step.groups[names[0]]]
    rows = np.concatenate([np.arange(*bounds[e]) for e in entries])
    groups: dict[str, list] = {name: [] for name in names}
    out_rows, r = [], 0
    for e in entries:
        n = bounds[e][1] - bounds[e][0]
        for name in names:
            g = step.groups[name][e]
            groups[name].append((r, r + n, g[2], g[3]))
        r += n
        out_rows.append(r - 1)
    return Step([step.ids[i] for i in rows], step.pos[rows], step.seq_id[rows],
                {name: step.slots[name][rows] for name in names}, step.n_kv, {}, out_rows=out_rows,
                groups=groups)
