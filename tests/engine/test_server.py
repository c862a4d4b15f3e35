"""`cellar serve` end to end: a real server process on 127.0.0.1 (an ephemeral port) with SmolLM2,
driven by the official `openai` client (and raw HTTP where the client cannot misbehave enough)."""
from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import openai
import pytest

KEY = "test-key-123"
pytestmark = pytest.mark.slow


class Server:
    def __init__(self, model, *extra: str):
        cmd = [sys.executable, "-m", "engine.cli", "serve", str(model), "--port", "0", "--threads", "2", *extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self._first_line(timeout=300)
        self.info = json.loads(line)
        assert self.info["event"] == "listening"
        self.url = self.info["url"]
        u = urlparse(self.url)
        self.host, self.port = u.hostname, u.port

    def _first_line(self, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if r:
                return self.proc.stdout.readline()
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stderr.read()}")
        self.proc.kill()
        raise AssertionError("server did not say it was listening in time")

    def client(self, key=KEY, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=300, **kw)

    def get(self, path: str) -> tuple[int, dict]:
        c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        c.request("GET", path)
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        return r.status, body

    def health(self) -> dict:
        status, body = self.get("/health")
        assert status == 200
        return body

    def wait(self, pred, timeout: float = 120.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            h = self.health()
            if pred(h):
                return h
            time.sleep(0.1)
        raise AssertionError(f"condition not reached; last /health: {h}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(smollm2_path):
    s = Server(smollm2_path, "--parallel", "4", "--ctx", "2048", "--api-key", KEY, "--max-body", "65536")
    yield s
    s.stop()
    err = s.proc.stderr.read()
    assert s.proc.returncode in (0, -signal.SIGTERM), err      # uvicorn re-raises the SIGTERM it caught
    assert "Traceback" not in err, err


def _cli_run(model, *args) -> dict:
    out = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(model), "--temp", "0", "--threads", "2",
                          "--json", *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]
    h = server.health()
    assert h["status"] == "ok" and h["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert [(s["id"], s["n_ctx"]) for s in h["slots"]] == [(i, 512) for i in range(4)]
    assert server.info["n_ctx"] == 2048 and server.info["parallel"] == 4


def test_chat_completion_equals_cellar_run(server, smollm2_path):
    r = server.client().chat.completions.create(model="any", messages=CHAT, temperature=0, max_tokens=24)
    ref = _cli_run(smollm2_path, "-p", CHAT[0]["content"], "-n", "24")
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == ref["text"]
    assert r.usage.prompt_tokens == ref["prompt_tokens"]
    assert r.usage.completion_tokens == len(ref["tokens"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert choice.finish_reason == ("length" if len(ref["tokens"]) == 24 else "stop")


def test_streamed_chat_equals_non_streamed(server):
    c = server.client()
    full = c.chat.completions.create(model="m", messages=CHAT, temperature=0, max_tokens=20)
    chunks = list(c.chat.completions.create(model="m", messages=CHAT, temperature=0, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1   # really streamed
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completion_equals_cellar_run_raw(server, smollm2_path):
    prompt = "The capital of France is"
    r = server.client().completions.create(model="m", prompt=prompt, temperature=0, max_tokens=12)
    ref = _cli_run(smollm2_path, "--raw", "-p", prompt, "-n", "12")
    assert r.choices[0].text == ref["text"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (ref["prompt_tokens"], len(ref["tokens"]))
    ids = server.client().completions.create(model="m", prompt=[1, 504, 3575], temperature=0, max_tokens=4)
    assert ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens >= 1


def test_stop_string_and_seeded_sampling(server):
    c = server.client()
    base = c.completions.create(model="m", prompt="1, 2, 3, 4,", temperature=0, max_tokens=16).choices[0].text
    assert " 6" in base
    cut = c.completions.create(model="m", prompt="1, 2, 3, 4,", temperature=0, max_tokens=16, stop=[" 6"])
    assert cut.choices[0].text == base[:base.index(" 6")]
    assert cut.choices[0].finish_reason == "stop"
    # same seed, cold prompt both times (a cached prompt re-evaluates its last token alone: other bits)
    a, b, d = (c.chat.completions.create(model="m", messages=CHAT, temperature=1.0, top_p=0.9, seed=seed,
                                         max_tokens=16, extra_body={"cache_prompt": False})
               for seed in (7, 7, 8))
    assert a.choices[0].message.content == b.choices[0].message.content
    assert d.choices[0].message.content != a.choices[0].message.content


def test_bad_key_is_401(server):
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(key="wrong").chat.completions.create(model="m", messages=CHAT, max_tokens=2)
    assert e.value.status_code == 401
    assert e.value.body["type"] == "authentication_error" and e.value.body["code"] == "invalid_api_key"
    status, body = server.get("/v1/models")                     # no Authorization header at all
    assert status == 401 and "missing API key" in body["error"]["message"]
    assert server.get("/health")[0] == 200                      # health needs no key


def test_oversized_body_is_413(server):
    big = [{"role": "user", "content": "x" * 70_000}]
    with pytest.raises(openai.APIStatusError) as e:
        server.client().chat.completions.create(model="m", messages=big, max_tokens=1)
    assert e.value.status_code == 413 and "limit" in e.value.body["message"]
    # chunked, without a Content-Length: counted as it arrives
    c = http.client.HTTPConnection(server.host, server.port, timeout=60)
    c.putrequest("POST", "/v1/completions")
    c.putheader("Authorization", f"Bearer {KEY}")
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    payload = json.dumps({"prompt": "y" * 100_000}).encode()
    try:
        for i in range(0, len(payload), 16384):
            part = payload[i:i + 16384]
            c.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        c.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = c.getresponse()
    assert r.status == 413
    assert json.loads(r.read())["error"]["code"] == "request_too_large"
    c.close()


@pytest.mark.parametrize("kw, param", [
    ({"n": 2}, "n"), ({"temperature": 5}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": "x"}, "frequency_penalty"),
    ({"extra_body": {"reasoning_format": "raw"}}, "reasoning_format"),
])
def test_bad_params_are_400(server, kw, param):
    args = {"model": "m", "messages": CHAT, **kw}
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(**args)
    assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"


def test_other_400_and_404(server):
    c = server.client()
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        c.completions.create(model="m", prompt=[1, 10_000_000], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="slot holds"):
        c.completions.create(model="m", prompt="word " * 600, max_tokens=2)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("POST", "/v1/completions", body=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    r = conn.getresponse()
    assert r.status == 400 and "not valid JSON" in json.loads(r.read())["error"]["message"]
    status, body = server.get("/v1/nothing-here")
    assert status == 401                                         # /v1/* asks for the key first
    status, body = server.get("/nothing-here")
    assert status == 404 and body["error"]["type"] == "not_found_error"


def _ask_alone(c, prompt):
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], temperature=0,
                                  max_tokens=32, extra_body={"cache_prompt": False})
    return r.choices[0].message.content


def test_four_parallel_clients_get_their_alone_text(server):
    prompts = ["Write a haiku about the sea.", "What is the capital of Italy?",
               "Give me a tip for learning Python.", "Describe a cat in one sentence."]
    c = server.client()
    alone = [_ask_alone(c, p) for p in prompts]
    before = server.health()
    together: list[str | None] = [None] * 4

    def ask(i):
        together[i] = _ask_alone(server.client(), prompts[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    after = server.health()
    assert together == alone
    steps = after["decode_steps"] - before["decode_steps"]
    decoded = after["decoded_tokens"] - before["decoded_tokens"]
    assert decoded > steps                        # some steps decoded several sequences at once


# ---- one slot, queue of one: busy and cancellation ------------------------------------------------
@pytest.fixture(scope="module")
def small(smollm2_path):
    s = Server(smollm2_path, "--parallel", "1", "--queue", "1", "--ctx", "4096")
    yield s
    s.stop()


def _raw_request(server: Server, body: dict) -> socket.socket:
    """Send a POST and leave the connection open without reading (a client that may vanish)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection((server.host, server.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


LONG = {"prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0, "ignore_eos": True,
        "cache_prompt": False}


def test_busy_503_and_disconnect_frees_the_slot(small):
    c = small.client()
    stream = c.completions.create(model="m", prompt=LONG["prompt"], max_tokens=LONG["max_tokens"], temperature=0,
                                  stream=True, extra_body={"ignore_eos": True, "cache_prompt": False})
    first = next(iter(stream))                                   # A holds the only slot
    assert first.choices[0].text is not None
    waiting = _raw_request(small, LONG)                          # B waits in the queue
    small.wait(lambda h: h["queue"] == 1)
    with pytest.raises(openai.APIStatusError) as e:              # C: queue full
        c.completions.create(model="m", prompt="hi", max_tokens=2)
    assert e.value.status_code == 503 and e.value.body["code"] == "server_busy"
    stream.close()                                               # A goes away: B gets the slot
    h = small.wait(lambda h: h["queue"] == 0 and h["slots"][0]["state"] == "busy")
    waiting.close()                                              # B goes away too: the slot frees
    h = small.wait(lambda h: h["slots"][0]["state"] == "idle")
    # stopped early: the slot holds the prompt and what was generated before the client left
    assert h["slots"][0]["n_cached"] < 1000
    ok = c.completions.create(model="m", prompt="The capital of France is", max_tokens=3, temperature=0)
    assert ok.usage.completion_tokens == 3


def test_cli_errors_are_one_line(smollm2_path, tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf")
    for args in (["serve", str(bad), "--port", "0"], ["serve", str(smollm2_path), "--parallel", "0"],
                 ["serve", str(smollm2_path), "--port", "0", "--parallel", "100"]):
        out = subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
