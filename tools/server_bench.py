"""Aggregate throughput of `cellar serve` with N parallel clients against one client, and whether each
client's greedy text equals the text it gets alone.

    .venv/bin/python tools/server_bench.py [--model smollm2] [--clients 4] [--tokens 64] [--rounds 2]

Starts `cellar serve MODEL --parallel N --port 0`, then per round: each prompt alone, one after the
other (one client), and all N prompts at once (N clients). Requests are greedy chat completions with
ignore_eos (every reply has exactly --tokens tokens) and cache_prompt false (every prompt is read
cold), so both phases do the same work. tok/s = completion tokens / wall seconds of the phase, prompt
reading included. Prints one JSON object; the ratio is aggregate(N clients) / one client.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle stays upright.",
           "List some good habits for writing Python code.", "Describe the water cycle to a child.",
           "What makes a good cup of tea?", "Tell me about the history of the printing press.",
           "How do bees make honey?", "Give advice to someone learning to cook."]


def start(model: str, parallel: int, threads: int, ctx: int) -> tuple[subprocess.Popen, str, int]:
    cmd = [sys.executable, "-m", "engine.cli", "serve", model, "--port", "0", "--parallel", str(parallel),
           "--threads", str(threads), "--ctx", str(ctx)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    end = time.monotonic() + 600
    while time.monotonic() < end:
        if select.select([proc.stdout], [], [], 1.0)[0]:
            u = urlparse(json.loads(proc.stdout.readline())["url"])
            return proc, u.hostname, u.port
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.stderr.read()}")
    proc.kill()
    sys.exit("server did not start in time")


def post(host: str, port: int, path: str, body: dict) -> dict:
    c = http.client.HTTPConnection(host, port, timeout=1200)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out = json.loads(r.read())
    c.close()
    if r.status != 200:
        sys.exit(f"HTTP {r.status}: {out}")
    return out


def get(host: str, port: int, path: str) -> dict:
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("GET", path)
    out = json.loads(c.getresponse().read())
    c.close()
    return out


def ask(host, port, prompt: str, tokens: int) -> tuple[str, int]:
    r = post(host, port, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": tokens,
        "ignore_eos": True, "cache_prompt": False})
    return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    a = ap.parse_args()
    prompts = PROMPTS[:a.clients]
    proc, host, port = start(a.model, a.clients, a.threads, a.ctx)
    try:
        ask(host, port, "Hello", 4)                                      # first-request costs out of the way
        single, multi, equal = [], [], True
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            alone = [ask(host, port, p, a.tokens) for p in prompts]
            t_single = time.perf_counter() - t0
            single.append(sum(n for _, n in alone) / t_single)
            together: list = [None] * len(prompts)
            h0 = get(host, port, "/health")

            def run(i):
                together[i] = ask(host, port, prompts[i], a.tokens)
            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            t_multi = time.perf_counter() - t0
            h1 = get(host, port, "/health")
            multi.append(sum(n for _, n in together) / t_multi)
            equal &= [t for t, _ in together] == [t for t, _ in alone]
            steps = h1["decode_steps"] - h0["decode_steps"]
            mean_batch = (h1["decoded_tokens"] - h0["decoded_tokens"]) / max(steps, 1)
        out = {"model": a.model, "clients": a.clients, "tokens_per_reply": a.tokens, "threads": a.threads,
               "rounds": a.rounds, "single_tok_s": [round(x, 2) for x in single],
               "parallel_tok_s": [round(x, 2) for x in multi],
               "ratio": round(statistics.median(multi) / statistics.median(single), 2),
               "mean_decode_batch_last_round": round(mean_batch, 2), "texts_equal_alone": equal}
        print(json.dumps(out))
        return 0 if equal else 1
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    sys.exit(main())
