"""A chat that outgrows the context: its oldest turns leave the prompt (prompting.fit_chat), the system
prompt and the last message stay, the roles still alternate (Gemma-3's template refuses otherwise), the
cut is kept on the next turns so the cached prefix serves them; `cellar chat` goes on and says so."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engine.errors import BadRequest
from engine.prompting import chat_tokens, fit_chat, reply_room

pytest.importorskip("engine.runtime")


def _load(path, ctx):
    from engine.runtime import LoadOptions, Model
    return Model.load(str(path), LoadOptions(ctx=ctx, threads=2, warmup=False))


def _conversation(turns: int, system: bool = True) -> list[dict]:
    msgs = [{"role": "system", "content": "You are a patient assistant who answers in full sentences."}] if system else []
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Question {i}: what is a good name for a cat that likes boxes and naps?"})
        msgs.append({"role": "assistant", "content": f"Answer {i}: a cat like that could be called Boxer, Nap King, "
                                                     "or Cardboard, names that say what it loves most."})
    msgs.append({"role": "user", "content": "And one more name, please?"})
    return msgs


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model(request):
    m = _load(request.getfixturevalue(f"{request.param}_path"), 256)
    yield m
    m.close()


def test_a_chat_that_fits_is_untouched(model):
    msgs = _conversation(1)
    assert fit_chat(model, msgs, room=32) == (chat_tokens(model, msgs), 0)


def test_the_oldest_turns_leave_and_the_system_prompt_stays(model):
    msgs = _conversation(8)
    room = reply_room(model.n_ctx, 40)
    assert room == 40 and reply_room(256, 0) == 64 and reply_room(256, 500) == 64
    assert len(chat_tokens(model, msgs)) + room > model.n_ctx          # it does not fit whole
    ids, left_out = fit_chat(model, msgs, room=room)
    assert left_out > 0 and left_out % 2 == 0                          # whole turns, a user message first
    kept = msgs[:1] + msgs[1 + left_out:]
    assert ids == chat_tokens(model, kept)
    assert len(ids) <= model.n_ctx - room - model.n_ctx // 4            # a further quarter freed
    # the fewest that do that: one turn fewer left out would not
    assert len(chat_tokens(model, msgs[:1] + msgs[1 + left_out - 2:])) > model.n_ctx - room - model.n_ctx // 4
    text = model.tokenizer.decode(ids)
    assert "patient assistant" in text and "one more name" in text and "Question 0:" not in text


def test_the_cut_stays_where_it_was_on_the_next_turn(model):
    msgs = _conversation(8)
    _, left_out = fit_chat(model, msgs, room=40)
    nxt = msgs + [{"role": "assistant", "content": "Whiskers."}, {"role": "user", "content": "Thanks!"}]
    ids, again = fit_chat(model, nxt, room=40, left_out=left_out)
    assert again == left_out                                           # it fits: no more leave
    assert ids == chat_tokens(model, nxt[:1] + nxt[1 + left_out:])
    # the same prefix as the turn before, so the cache serves it
    before = chat_tokens(model, msgs[:1] + msgs[1 + left_out:], add_generation_prompt=False)
    assert ids[:len(before) - 2] == before[:len(before) - 2]


def test_no_system_prompt_and_a_message_too_long_alone(model):
    msgs = _conversation(8, system=False)
    ids, left_out = fit_chat(model, msgs, room=40)
    assert left_out > 0 and msgs[left_out]["role"] == "user" and ids == chat_tokens(model, msgs[left_out:])
    huge = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(BadRequest) as e:
        fit_chat(model, huge, room=40)
    msg = str(e.value)
    assert "the last message takes" in msg and "larger context" in msg and "\n" not in msg


def test_terminal_chat_goes_on_past_the_context(smollm2_path, tmp_path):
    lines = [f"Tell me a story about dragon number {i}." for i in range(5)]
    lines += ["/help", "/frob", f"/save {tmp_path / 'no' / 'such' / 'dir.session'}", "Thanks, bye."]
    r = subprocess.run([sys.executable, "-m", "app.launcher", "chat", str(smollm2_path), "-n", "50", "--temp", "0",
                        "--ctx", "256"], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert err.count(" generated, ") == 6, err                         # every message got its reply
    assert "the conversation outgrew the context (256 tokens)" in err and "oldest message" in err
    assert "/reset" in err and "[unknown command /frob: /help lists them]" in err
    assert "[not saved: " in err and "Traceback" not in err


def test_terminal_chat_raw_text_past_the_context(smollm2_path):
    lines = [f"Line {i} of a long story about a lighthouse keeper and the sea." for i in range(8)]
    lines += ["word " * 300, "The end."]                                # alone longer than the context
    r = subprocess.run([sys.executable, "-m", "app.launcher", "chat", str(smollm2_path), "--raw", "-n", "24",
                        "--temp", "0", "--ctx", "128"], input="\n".join(lines) + "\n", capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert err.count(" generated, ") == 9, err                         # all but the over-long one answered
    assert "the text outgrew the context (128 tokens)" in err and "oldest tokens left out" in err
    assert "context holds 128" in err and "Traceback" not in err


def test_terminal_chat_goes_on_after_a_reply_is_stopped(gemma3_path, monkeypatch, capsys):
    """Ctrl+C stops a reply: what came so far is that turn's answer, in the next turn's prompt between the
    two user messages (the roles keep alternating, as templates that check them want), and the chat goes on."""
    import argparse
    import io

    from engine.chat_repl import chat_loop
    from engine.sampling import SamplingParams
    m = _load(gemma3_path, 512)
    real, calls = m.generate, []

    def generate(prompt, n, sampler, on_token=None, **kw):
        calls.append(list(prompt))
        if len(calls) == 1:                     # the first reply: two pieces, then Ctrl+C
            on_token(1, "Hel")
            on_token(2, "lo")
            raise KeyboardInterrupt
        return real(prompt, n, sampler, on_token=on_token, **kw)

    monkeypatch.setattr(m, "generate", generate)
    monkeypatch.setattr("sys.stdin", io.StringIO("Say hello.\nNow say goodbye.\n"))
    args = argparse.Namespace(system=None, load_session=None, raw=False, n_predict=4, save_session=None)
    assert chat_loop(m, args, SamplingParams(temperature=0)) == 0
    err = capsys.readouterr().err
    assert "[stopped]" in err and err.count(" generated, ") == 1 and "alternate" not in err, err
    assert len(calls) == 2
    second = m.tokenizer.decode(calls[1])
    assert second.index("Say hello.") < second.index("Hello") < second.index("Now say goodbye."), second
    m.close()
