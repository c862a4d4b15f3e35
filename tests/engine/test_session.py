"""Session save/restore: the file format and its validation (on a small in-memory KV cache bound to the
real GGUF headers), and token-exact continuation on the real models."""
from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine import session, session_file, session_kv
from engine.errors import BadRequest, BadSessionFile, CellarError
from engine.gguf import GGUFFile
from engine.kv_cache import KVCache, KVMemory
from engine.sampling import Sampler, SamplingParams

ROOT = Path(__file__).resolve().parents[2]


class TinyKVModel:
    """A model-shaped object: a real GGUF header and a small engine.kv_cache.KVMemory (a global cache and
    a sliding-window one) filled with random rows, exposing the runtime's session hooks."""

    def __init__(self, gguf_path, n_ctx=64, kv_type="f16", width=32, n_layers=3, window=12):
        self.gguf = GGUFFile.open(gguf_path, read_data=False)
        self.arch, self.n_ctx = self.gguf.arch, n_ctx
        self.opts = SimpleNamespace(kv_type=kv_type)
        self.kv = KVMemory([KVCache("global", list(range(n_layers)), n_ctx, width, width, kv_type),
                            KVCache("swa", [n_layers], min(n_ctx, window + 4), width, width, kv_type,
                                    swa_window=window)])
        self.tokens: list[int] = []

    def feed(self, tokens, seed=0):
        """Pretend to evaluate `tokens` one at a time: claim cells as the runtime would, random K/V."""
        g = torch.Generator().manual_seed(seed)
        for t in tokens:
            pos = np.array([len(self.tokens)])
            slots = self.kv.find_slot(pos, 0)
            for c, sl in zip(self.kv.caches, slots):
                for il in c.layers:
                    c.write(il, sl, torch.randn(1, c.k_width, generator=g), torch.randn(1, c.v_width, generator=g))
            self.tokens.append(int(t))

    def kv_layout(self):
        return session_kv.memory_layout(self.kv)

    def export_kv(self, seq_id):
        return session_kv.export_memory(self.kv, seq_id, self.tokens)

    def import_kv(self, seq_id, state):
        session_kv.import_memory(self.kv, seq_id, state)
        self.tokens = list(state.cached)

    def snapshot(self):
        return (list(self.tokens), [(c.pos.copy(), c.seq.copy(), c.shift.copy(), c.head) for c in self.kv.caches],
                {il: (c.k[il].clone(), c.v[il].clone()) for c in self.kv.caches for il in c.layers})

    def same_as(self, snap) -> bool:
        tokens, cells, kv = snap
        return (tokens == self.tokens
                and all(np.array_equal(p, c.pos) and np.array_equal(s, c.seq) and np.array_equal(sh, c.shift)
                        and h == c.head for (p, s, sh, h), c in zip(cells, self.kv.caches))
                and all(torch.equal(kv[il][0], c.k[il]) and torch.equal(kv[il][1], c.v[il])
                        for c in self.kv.caches for il in c.layers))


def seeded_sampler(seed=5):
    return Sampler(SamplingParams(temperature=0.9, seed=seed))


@pytest.fixture
def tiny(smollm2_path):
    m = TinyKVModel(smollm2_path)
    m.feed(range(100, 140))
    return m


def saved(tmp_path, model, tokens=None, name="s.cellar", sampler=None, extra=None):
    p = tmp_path / name
    session.save(model, p, tokens=list(model.tokens) + [7] if tokens is None else tokens,
                 sampler=sampler or seeded_sampler(), extra=extra if extra is not None else {"raw": True})
    return p


# ---------------------------------------------------------------- round trip and size

def test_round_trip_restores_cells_tokens_sampler_and_extra(tmp_path, smollm2_path, tiny):
    s = seeded_sampler()
    s.rng.random(3)                                     # move the RNG off its seed
    p = saved(tmp_path, tiny, sampler=s, extra={"messages": [{"role": "user", "content": "héllo"}], "raw": False})
    fresh = TinyKVModel(smollm2_path)
    info = session.load(fresh, p)
    assert info.tokens == tiny.tokens + [7] and info.n_cached == len(tiny.tokens)
    assert info.extra == {"messages": [{"role": "user", "content": "héllo"}], "raw": False}
    assert fresh.same_as(tiny.snapshot())
    restored = seeded_sampler(seed=999)
    restored.set_state(info.sampler_state)
    assert restored.rng.random(5).tolist() == s.rng.random(5).tolist()


def test_restored_cache_places_the_next_tokens_where_the_original_does(tmp_path, smollm2_path, tiny):
    tiny.kv.seq_add(0, 30, 40, -2)                      # a pending RoPE shift must survive too
    p = saved(tmp_path, tiny)
    fresh = TinyKVModel(smollm2_path)
    fresh.feed(range(900, 911), seed=9)                 # whatever it held before is replaced
    session.load(fresh, p)
    assert fresh.same_as(tiny.snapshot()) and fresh.kv.caches[0].has_shift
    for m in (tiny, fresh):
        m.kv.apply_shift(lambda il, k, delta: k + delta[:, None].float())
        m.feed(range(20), seed=4)                       # the window cache reuses cells: same ones in both
    assert fresh.same_as(tiny.snapshot())


def test_cells_held_by_another_conversation_are_not_overwritten(tmp_path, smollm2_path, tiny):
    p = saved(tmp_path, tiny)
    other = TinyKVModel(smollm2_path)
    other.feed(range(3))
    other.kv.seq_cp(0, 1)                               # sequence 1 shares the first cells
    before = other.snapshot()
    with pytest.raises(BadRequest, match="in use by another conversation"):
        session.load(other, p)
    assert other.same_as(before)


def test_size_follows_used_cells_not_context(tmp_path, smollm2_path):
    sizes = {}
    for ctx in (512, 4096):
        for n in (10, 200):
            m = TinyKVModel(smollm2_path, n_ctx=ctx, width=64)
            m.feed(range(n))
            sizes[ctx, n] = saved(tmp_path, m, name=f"{ctx}-{n}.cellar").stat().st_size
    assert abs(sizes[512, 200] - sizes[4096, 200]) < 16        # only the digits of n_ctx differ
    assert abs(sizes[512, 10] - sizes[4096, 10]) < 16
    per_cell = 3 * 2 * 64 * 2 + 24 + 8                         # 3 layers' K and V (64 f16 each), slot,
    grown = sizes[4096, 200] - sizes[4096, 10]                 # position, seq, shift, 2 token lists
    swa_fill = 6 * (2 * 64 * 2 + 24)                           # the window cache's last 6 of 16 cells
    assert per_cell * 190 + swa_fill <= grown <= per_cell * 190 + swa_fill + 200
    assert sizes[4096, 10] < 40_000                            # nothing proportional to 4096 cells


@pytest.mark.parametrize("kv_type", ["q8_0", "bf16"])
def test_q8_and_bf16_kv_rows_round_trip(tmp_path, smollm2_path, kv_type):
    m = TinyKVModel(smollm2_path, kv_type=kv_type, width=64)
    m.feed(range(20))
    p = saved(tmp_path, m)
    fresh = TinyKVModel(smollm2_path, kv_type=kv_type, width=64)
    session.load(fresh, p)
    assert fresh.same_as(m.snapshot())


# ---------------------------------------------------------------- refusals leave the model untouched

def assert_refused(model, path, *words):
    before = model.snapshot()
    with pytest.raises(BadSessionFile) as e:
        session.load(model, path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400
    for w in words:
        assert w in msg, msg
    assert model.same_as(before)
    return msg


def busy_model(smollm2_path, **kw):
    m = TinyKVModel(smollm2_path, **kw)
    m.feed(range(500, 505), seed=3)
    return m


def test_truncated_files_are_refused(tmp_path, smollm2_path, tiny):
    p = saved(tmp_path, tiny)
    data = p.read_bytes()
    target = busy_model(smollm2_path)
    for cut in (0, 3, 8, 40, 63, 64, 100, len(data) // 2, len(data) - 1):
        q = tmp_path / f"cut{cut}.cellar"
        q.write_bytes(data[:cut])
        msg = assert_refused(target, q)
        assert "truncated" in msg or "empty" in msg


def test_flipped_bytes_are_refused(tmp_path, smollm2_path, tiny):
    p = saved(tmp_path, tiny)
    data = p.read_bytes()
    target = busy_model(smollm2_path)
    hlen = struct.unpack_from("<Q", data, 16)[0]
    for at in (0, 9, 13, 20, 28, 40, 70, 64 + hlen // 2, 64 + hlen + 10, len(data) - 1):
        bad = bytearray(data)
        bad[at] ^= 0x20
        q = tmp_path / f"flip{at}.cellar"
        q.write_bytes(bytes(bad))
        assert_refused(target, q)
    assert "checksum" in assert_refused(target, q)


def rewrite(path, edit_header=None, edit_tensors=None):
    """Re-sign a session after editing it: what a careless tool or a crafted file would produce."""
    header, tensors = session_file.read_session_file(path)
    if edit_header:
        edit_header(header)
    if edit_tensors:
        edit_tensors(tensors)
    session_file.write_session_file(path, header, tensors)
    return path


@pytest.mark.parametrize("edit,words", [
    (lambda h, t: h["caches"][0].update(n_used=10_000), ["cells"]),
    (lambda h, t: h.update(n_cached=10), ["corrupt"]),
    (lambda h, t: t.update({"c0.idx": torch.zeros_like(t["c0.idx"])}), ["twice"]),
    (lambda h, t: t.update({"c0.idx": t["c0.idx"] + 1000}), ["beyond"]),
    (lambda h, t: t.update({"c1.pos": t["c1.pos"] - 100}), ["positions"]),
    (lambda h, t: t.update({"tokens": t["tokens"] + 10**8}), ["vocabulary"]),
    (lambda h, t: t.update({"c0.l1.k": t["c0.l1.k"][:, :4].contiguous()}), ["c0.l1.k"]),
    (lambda h, t: t.update({"c0.l1.v": t["c0.l1.v"].float()}), ["float32"]),
    (lambda h, t: t.update({"c0.l2.v": torch.full_like(t["c0.l2.v"], float("nan"))}), ["non-finite"]),
    (lambda h, t: t["c1.l3.k"].__setitem__((2, 5), float("-inf")), ["non-finite"]),
    (lambda h, t: t.pop("c1.seq"), ["missing"]),
    (lambda h, t: t.update({"c1.seq": t["c1.seq"] * 2}), ["outside the saved sequence"]),
    (lambda h, t: h.update(seq_id=99), ["out of range"]),
    (lambda h, t: t.update({"payload.extra": torch.zeros(3)}), ["unexpected"]),
    (lambda h, t: h.update(sampler={"rng": 5}), ["sampler"]),
    (lambda h, t: h.update(sampler={"params": {"temperature": -1}, "rng": {}}), ["sampler"]),
    (lambda h, t: h.update(sampler=[1, 2]), ["sampler"]),
    (lambda h, t: h.update(extra=[1]), ["extra"]),
    (lambda h, t: h.pop("kv_type"), ["kv_type"]),
    (lambda h, t: h["model"].update(arch="gemma3"), ["architecture"]),
    (lambda h, t: h.update(format="other"), ["not a Cellar session"]),
])
def test_consistent_checksum_but_bad_contents_are_refused(tmp_path, smollm2_path, tiny, edit, words):
    p = saved(tmp_path, tiny)
    state = {}
    rewrite(p, edit_header=lambda h: state.setdefault("h", h),
            edit_tensors=lambda t: edit(state["h"], t))
    assert_refused(busy_model(smollm2_path), p, *words)


def test_session_of_another_model_names_both(tmp_path, smollm2_path, gemma3_path, tiny):
    p = saved(tmp_path, tiny)
    other = busy_model(gemma3_path)
    assert_refused(other, p, "this session was saved with Smollm2 135M", "not Gemma 3 270m")


def test_another_file_with_the_same_header_is_another_model(tmp_path, smollm2_path, tiny):
    p = saved(tmp_path, tiny)
    twin = tmp_path / "twin.gguf"
    data = bytearray(Path(smollm2_path).read_bytes())
    data[-1000] ^= 1                                           # same header, one weight byte differs
    twin.write_bytes(bytes(data))
    assert_refused(busy_model(twin), p, "saved with")


def test_kv_type_and_context_mismatches_say_what_to_do(tmp_path, smollm2_path, tiny):
    p = saved(tmp_path, tiny)
    assert_refused(busy_model(smollm2_path, kv_type="q8_0"), p, "--kv-type f16")
    assert_refused(busy_model(smollm2_path, n_ctx=32), p, "holds 41 tokens", "--ctx 42")
    long_history = saved(tmp_path, tiny, tokens=list(range(100)), name="shifted.cellar")
    assert session.load(TinyKVModel(smollm2_path), long_history).tokens == list(range(100))  # past its context


def test_non_session_files_are_refused(tmp_path, smollm2_path):
    target = busy_model(smollm2_path)
    q = tmp_path / "x.cellar"
    q.write_bytes(b"\x80\x04\x95" + b"pickle" * 20)
    assert_refused(target, q, "not a Cellar session")
    assert_refused(target, tmp_path / "missing.cellar", "no such")
    assert_refused(target, tmp_path, "folder")


def test_absurd_lengths_are_refused_before_reading(tmp_path, smollm2_path, tiny):
    p = saved(tmp_path, tiny)
    data = bytearray(p.read_bytes())
    target = busy_model(smollm2_path)
    for off, value, word in ((16, 1 << 40, "more than"), (24, 1 << 60, "truncated"), (24, 0, "unexpected bytes")):
        bad = bytearray(data)
        struct.pack_into("<Q", bad, off, value)
        p.write_bytes(bytes(bad))
        assert_refused(target, p, word)
    big = session_file.PREAMBLE.pack(session_file.MAGIC, 1, 0, 2, 1 << 31, b"\0" * 32) + b"{}"
    p.write_bytes(big)
    with open(p, "r+b") as f:                                  # sparse: 2 GiB claimed and present
        f.truncate(len(big) + (1 << 31))
    assert_refused(target, p, "more than any session")


def test_deeply_nested_header_is_refused(tmp_path, smollm2_path):
    head = b"[" * 200_000 + b"]" * 200_000
    digest = __import__("hashlib").sha256(head).digest()
    p = tmp_path / "deep.cellar"
    p.write_bytes(session_file.PREAMBLE.pack(session_file.MAGIC, 1, 0, len(head), 0, digest) + head)
    assert_refused(busy_model(smollm2_path), p, "nests too deeply")


# ---------------------------------------------------------------- atomic writes

def test_full_disk_keeps_the_previous_session(tmp_path, smollm2_path, tiny, monkeypatch):
    p = saved(tmp_path, tiny)
    before = p.read_bytes()
    tiny.feed(range(5))
    calls = []

    def full(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.write(fd, data)

    monkeypatch.setattr(session_file, "_write", full)
    with pytest.raises(CellarError) as e:
        saved(tmp_path, tiny)
    assert "no space left" in str(e.value) and "\n" not in str(e.value)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.cellar"]     # no temp file left behind


def test_crash_mid_write_keeps_the_previous_session(tmp_path, smollm2_path, tiny):
    p = saved(tmp_path, tiny)
    before = p.read_bytes()
    child = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from engine import session, session_file
from tests.engine.test_session import TinyKVModel, seeded_sampler
m = TinyKVModel({str(smollm2_path)!r}, n_ctx=512); m.feed(range(300))
real, calls = session_file._write, []
def dying(fd, data):
    calls.append(1)
    if len(calls) == 3:                                        # the process dies halfway through the payload
        real(fd, bytes(data)[:len(data) // 2]); os._exit(9)
    real(fd, data)
session_file._write = dying
session.save(m, {str(p)!r}, tokens=m.tokens, sampler=seeded_sampler(), extra={{}})
"""
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert r.returncode == 9, r.stderr.decode()[-2000:]
    assert p.read_bytes() == before
    fresh = TinyKVModel(smollm2_path)
    assert session.load(fresh, p).tokens == tiny.tokens + [7]
    assert len(list(tmp_path.glob(".s.cellar.*.tmp"))) == 1            # the dead save's temp file
    saved(tmp_path, tiny)                                               # the next save clears it
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.cellar"]


def test_unwritable_folder_and_bad_extra_are_one_line_errors(tmp_path, tiny):
    with pytest.raises(CellarError) as e:
        saved(tmp_path / "no" / "such", tiny)
    assert "folder does not exist" in str(e.value)
    with pytest.raises(CellarError) as e:
        saved(tmp_path, tiny, extra={"x": object()})
    assert "not plain JSON" in str(e.value)
    assert not any(tmp_path.iterdir())


def test_header_is_plain_json(tmp_path, tiny):
    p = saved(tmp_path, tiny)
    data = p.read_bytes()
    hlen = struct.unpack_from("<Q", data, 16)[0]
    h = json.loads(data[64:64 + hlen])
    assert h["model"]["arch"] == "llama" and h["n_cached"] == 40 and h["n_tokens"] == 41
    assert [c["n_used"] for c in h["caches"]] == [40, 16]


# ---------------------------------------------------------------- real models: token-exact continuation

def load_model(path, ctx=256, ubatch=512):
    runtime = pytest.importorskip("engine.runtime", reason="the runtime is not part of this tree yet")
    return runtime.Model.load(path, runtime.LoadOptions(ctx=ctx, batch=ubatch, ubatch=ubatch, threads=2,
                                                        warmup=False))


def continue_after_restore(tmp_path, path, prompt_text, make_sampler, ctx=256, n=8, ubatch=512):
    """(uninterrupted 2n tokens, first n + n after save -> fresh model -> restore, n_eval after restore)."""
    from engine.prompting import raw_tokens
    a = load_model(path, ctx, ubatch)
    prompt = raw_tokens(a, prompt_text)
    whole = a.generate(prompt, 2 * n, make_sampler()).tokens
    a.reset()
    s1 = make_sampler()
    first = a.generate(prompt, n, s1).tokens
    p = tmp_path / "run.cellar"
    session.save(a, p, tokens=list(prompt) + list(first), sampler=s1, extra={"raw": True})
    a.close()
    b = load_model(path, ctx, ubatch)
    info = session.load(b, p)
    assert b.cached_tokens() == info.tokens[:-1] and info.tokens == list(prompt) + list(first)
    s2 = make_sampler()
    if info.sampler_state is not None:
        s2.set_state(info.sampler_state)
    res = b.generate(info.tokens, n, s2)
    return whole, list(first) + list(res.tokens), res.n_eval, b, p


@pytest.mark.parametrize("make_sampler", [lambda: Sampler(SamplingParams(temperature=0)),
                                          lambda: Sampler(SamplingParams(temperature=0.9, seed=11))],
                         ids=["greedy", "seeded"])
def test_restored_smollm2_continues_token_for_token(tmp_path, smollm2_path, make_sampler):
    whole, resumed, n_eval, model, _ = continue_after_restore(
        tmp_path, smollm2_path, "The old lighthouse keeper climbed the stairs and", make_sampler)
    assert resumed == whole
    assert n_eval == 8                                   # the last sampled token, then 7 decode steps:
    model.close()                                        # nothing of the restored history again


@pytest.mark.slow
def test_restored_gemma3_continues_and_refuses_a_smollm2_session(tmp_path, smollm2_path, gemma3_path):
    # ~600 prompt tokens against a window of 512 (+ ubatch 64 cells): the sliding-window cells wrap
    text = " ".join(f"Room {i} of the castle holds a {['red', 'blue', 'green'][i % 3]} chest." for i in range(55))
    whole, resumed, n_eval, gemma, p = continue_after_restore(
        tmp_path, gemma3_path, text + " The chest in room 7 is", lambda: Sampler(SamplingParams(temperature=0)),
        ctx=1024, ubatch=64)
    assert resumed == whole and n_eval == 8
    header, _ = session_file.read_session_file(p)
    assert [c["name"] for c in header["caches"]] == ["global", "swa"]
    assert header["caches"][1]["n_used"] == header["caches"][1]["n_cells"] == 512 + 64 < header["n_cached"]
    small = TinyKVModel(smollm2_path)
    small.feed(range(30))
    foreign = saved(tmp_path, small, name="smol.cellar")
    before = gemma.cached_tokens()
    with pytest.raises(BadSessionFile, match="saved with Smollm2 135M.*not Gemma 3 270m"):
        session.load(gemma, foreign)
    assert gemma.cached_tokens() == before
    gemma.close()


def test_real_session_size_follows_tokens_not_context(tmp_path, smollm2_path):
    from engine.prompting import raw_tokens
    sizes = {}
    for ctx in (512, 4096):
        m = load_model(smollm2_path, ctx)
        prompt = raw_tokens(m, "One two three four five six seven eight nine ten")
        for extra_tokens in (0, 16):
            m.reset()
            m.eval(prompt + list(range(1000, 1000 + extra_tokens)))
            p = tmp_path / f"{ctx}-{extra_tokens}.cellar"
            session.save(m, p, tokens=m.cached_tokens(), sampler=None, extra={})
            sizes[ctx, extra_tokens] = p.stat().st_size
        m.close()
    assert abs(sizes[512, 16] - sizes[4096, 16]) < 16
    per_token = 30 * 2 * 3 * 64 * 2                     # 30 layers, K and V, 3 KV heads x 64, f16
    assert 16 * per_token <= sizes[4096, 16] - sizes[4096, 0] <= 16 * (per_token + 64)


@pytest.mark.slow
def test_cli_save_then_load_session_equals_one_run(tmp_path, smollm2_path, capsys):
    pytest.importorskip("engine.runtime", reason="the runtime is not part of this tree yet")
    from engine.cli import main

    def run(*extra):
        rc = main(["run", str(smollm2_path), "--raw", "--temp", "0.8", "--ctx", "256", "--batch", "16",
                   "--threads", "2", "--json", *extra])
        out, err = capsys.readouterr()
        return rc, (json.loads(out) if rc == 0 else None), err

    f = tmp_path / "cli.cellar"
    _, whole, _ = run("-p", "Once upon a time", "-n", "12", "--seed", "3")
    _, first, _ = run("-p", "Once upon a time", "-n", "6", "--seed", "3", "--save-session", str(f))
    _, rest, _ = run("-p", "", "-n", "6", "--load-session", str(f))      # the saved RNG state goes on
    assert first["tokens"] + rest["tokens"] == whole["tokens"]
    assert rest["n_eval"] == 6                                            # nothing of the history again
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    rc, _, err = run("-p", "", "-n", "2", "--load-session", str(f))
    assert rc == 2 and err.startswith("error: cli.cellar: checksum mismatch") and err.count("\n") == 1
