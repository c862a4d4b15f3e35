"""The engine worker driven through its process with the real SmolLM2 model: streaming, cancel
(between tokens and during prefill), cache reuse, typed errors that leave the worker usable, and
telemetry."""
from __future__ import annotations

import time

import pytest

from engine import protocol as P
from tests.engine.engine_helpers import load, started_client

pytest.importorskip("engine.runtime")

CHAT = [{"role": "user", "content": "Count from one to one hundred in words, separated by commas."}]


@pytest.fixture(scope="module")
def engine(smollm2_path):
    client, rec = started_client()
    loaded = load(client, rec, smollm2_path, ubatch=16, batch=16)
    yield client, rec, loaded
    client.stop()


def test_load_reports_progress_model_and_kv(engine):
    client, rec, loaded = engine
    assert loaded.arch == "llama" and loaded.n_ctx == 512 and loaded.n_vocab == 49152
    progress = [e.fraction for e in rec.of(P.LoadProgress)]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    assert rec.of(P.KVSnapshot), "a KV snapshot follows the load"


def test_stream_then_cancel_midway(engine):
    client, rec, _ = engine
    mark = rec.mark()
    client.send(P.Generate("c1", messages=CHAT, max_tokens=200, temperature=0.0))
    rec.wait_for(lambda e: len(rec.of(P.Token, mark)) >= 5, 60, mark)
    client.send(P.Snapshot())                    # answered between tokens, mid-reply
    snap = rec.wait_for(lambda e: isinstance(e, P.KVSnapshot), 10, mark).snapshot
    assert snap["used"] >= len(rec.of(P.Token, mark)) and snap["total"] == 512
    n_at_cancel = len(rec.of(P.Token, mark))
    t0 = time.perf_counter()
    client.cancel("c1")
    assert client.wait_state(P.EngineState.IDLE, 5)
    latency = time.perf_counter() - t0
    print(f"cancel to idle: {latency * 1000:.0f} ms")      # a figure for the notes, not a pass mark
    done = rec.done("c1", 5, mark)
    assert done.stop_reason == "cancelled"
    tokens = rec.of(P.Token, mark)
    assert 5 <= done.n_tokens < 200 and len(tokens) == done.n_tokens
    assert "".join(t.text for t in tokens) == done.text
    kinds = [type(e) for e in rec.events[mark:]]
    assert kinds.index(P.KVSnapshot) < kinds.index(P.GenerationDone)     # the snapshot came mid-reply
    # honoured between tokens: at most the token being computed and one already in the pipe follow
    # (counted in tokens, not milliseconds, so a busy machine cannot fail it)
    assert done.n_tokens - n_at_cancel <= 3, (n_at_cancel, done.n_tokens, f"{latency * 1000:.0f} ms")


def test_cancel_during_prefill(engine):
    client, rec, _ = engine
    mark = rec.mark()
    long_text = "The quick brown fox jumps over the lazy dog. " * 16     # ~160 tokens, 10 ubatches of 16
    client.send(P.Generate("p1", prompt=long_text, max_tokens=50, temperature=0.0))
    rec.wait_for(lambda e: isinstance(e, P.StateChanged) and e.state is P.EngineState.GENERATING, 10, mark)
    client.cancel()                              # whatever is running
    done = rec.done("p1", 60, mark)
    assert done.stop_reason == "cancelled" and done.n_tokens == 0
    snap = rec.wait_for(lambda e: isinstance(e, P.KVSnapshot), 5, mark).snapshot
    assert 0 < snap["sequences"].get(0, 0) < done.prompt_tokens      # stopped between ubatches


def test_second_turn_evaluates_only_new_tokens(engine):
    client, rec, _ = engine
    mark = rec.mark()
    turn1 = [{"role": "user", "content": "Name a colour."}]
    client.send(P.Generate("t1", messages=turn1, max_tokens=8, temperature=0.0, conversation_id="cv"))
    first = rec.done("t1", 60, mark)
    assert first.stop_reason in ("length", "eos") and first.n_tokens > 0 and first.tok_s > 0
    turn2 = turn1 + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Another."}]
    client.send(P.Generate("t2", messages=turn2, max_tokens=4, temperature=0.0, conversation_id="cv"))
    second = rec.done("t2", 60, mark)
    assert second.prompt_tokens > first.prompt_tokens
    assert second.prompt_eval < second.prompt_tokens - first.prompt_tokens + 8


def test_a_conversation_past_the_context_leaves_out_its_oldest_turns(engine):
    """The app sends the whole conversation: past the context (512 here) its oldest turns stay out of the
    prompt, the reply says how many, and the next turn keeps the same cut so the cached prefix serves it."""
    client, rec, _ = engine
    mark = rec.mark()
    long = [{"role": "system", "content": "You are brief."}]
    for i in range(14):
        long += [{"role": "user", "content": f"Fact {i}: tell me something true about the number {i} in a sentence."},
                 {"role": "assistant", "content": f"The number {i} is one of the whole numbers, and it comes right "
                                                  f"after {i - 1} when people count upwards."}]
    turn1 = long + [{"role": "user", "content": "Which number did we start with?"}]
    client.send(P.Generate("f1", messages=turn1, max_tokens=8, temperature=0.0, conversation_id="long"))
    first = rec.done("f1", 60, mark)
    assert first.stop_reason in ("length", "eos") and first.left_out > 0 and first.left_out % 2 == 0
    assert first.prompt_tokens + 8 <= 512 - 128                      # room for the reply and a quarter more
    turn2 = turn1 + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    client.send(P.Generate("f2", messages=turn2, max_tokens=8, temperature=0.0, conversation_id="long"))
    second = rec.done("f2", 60, mark)
    assert second.left_out == first.left_out and second.stop_reason in ("length", "eos")
    assert second.prompt_eval < second.prompt_tokens - first.prompt_tokens + 8     # the prefix was reused
    assert not [e for e in rec.of(P.Error, mark) if e.request_id in ("f1", "f2")]


def test_bad_requests_are_typed_and_worker_goes_on(engine, tmp_path):
    client, rec, _ = engine
    mark = rec.mark()
    client.send(P.Generate("e1", messages=[], max_tokens=4))
    client.send(P.Generate("e2", prompt="hi", top_p=0.0))
    client.send(P.RestoreSession(str(tmp_path / "missing.session"), request_id="e3"))
    errors = [rec.wait_for(lambda e, r=r: isinstance(e, P.Error) and e.request_id == r, 10, mark)
              for r in ("e1", "e2", "e3")]
    assert [e.kind for e in errors] == [P.ErrorKind.BAD_INPUT] * 3
    assert all("\n" not in e.message for e in errors)
    assert [rec.done(r, 5, mark).stop_reason for r in ("e1", "e2")] == ["error", "error"]
    client.send(P.Generate("ok", prompt="Hello", max_tokens=3, temperature=0.0))
    assert rec.done("ok", 60, mark).n_tokens == 3


def test_malformed_file_is_a_typed_error_and_the_model_stays(engine, tmp_path):
    client, rec, _ = engine
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 64)
    mark = rec.mark()
    client.send(P.Load(str(bad)))
    err = rec.wait_for(lambda e: isinstance(e, P.Error), 30, mark)
    assert err.kind is P.ErrorKind.BAD_MODEL_FILE and "\n" not in err.message
    assert client.wait_state(P.EngineState.IDLE, 5) and client.alive
    client.send(P.Generate("after", prompt="Hello", max_tokens=3, temperature=0.0))
    assert rec.done("after", 60, mark).n_tokens == 3


def test_telemetry_rates_and_fields(engine):
    client, rec, _ = engine
    mark = rec.mark()
    client.send(P.Generate("tm", messages=CHAT, max_tokens=400, temperature=0.0))
    rec.wait_for(lambda e: len(rec.of(P.Token, mark)) >= 1, 60, mark)
    t0 = time.time()
    time.sleep(1.6)
    client.cancel("tm")
    rec.done("tm", 5, mark)
    busy = [e for e in rec.of(P.Telemetry, mark) if e.state is P.EngineState.GENERATING and e.t >= t0]
    assert len(busy) >= 5                        # ~4 Hz while generating
    last = busy[-1]
    assert last.rss_bytes > 50 * 2**20 and 0 < last.ram_available_bytes <= last.ram_total_bytes
    assert last.kv_total == 512 and 0 < last.kv_used <= 512 and last.tok_s > 0
    assert (last.vram is None and last.vram_note == "no NVIDIA GPU") or last.vram[0]["total"] > 0
    mark = rec.mark()
    time.sleep(2.2)
    idle = [e for e in rec.of(P.Telemetry, mark) if e.state is P.EngineState.IDLE]
    assert 1 <= len(idle) <= 4                   # ~1 Hz when idle


def test_cancel_all_drops_queued_requests_too(engine):
    client, rec, _ = engine
    mark = rec.mark()
    client.send(P.Generate("q1", messages=CHAT, max_tokens=200, temperature=0.0))
    client.send(P.Generate("q2", messages=CHAT, max_tokens=200, temperature=0.0))
    rec.wait_for(lambda e: isinstance(e, P.Token) and e.request_id == "q1", 60, mark)
    client.cancel()
    first, second = rec.done("q1", 5, mark), rec.done("q2", 5, mark)
    assert (first.stop_reason, second.stop_reason) == ("cancelled", "cancelled")
    assert second.n_tokens == 0 and not [t for t in rec.of(P.Token, mark) if t.request_id == "q2"]
    assert client.wait_state(P.EngineState.IDLE, 5)
