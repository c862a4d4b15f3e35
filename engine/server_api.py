"""The OpenAI wire format: request validation and response shapes (no HTTP, no model).

    p = parse_generation(body)             # ApiError(400, ...) naming the bad field
    msgs = parse_messages(body)            # chat: [{"role", "content"}] with text content only
    prompt = parse_prompt(body)            # completions: str or token ids
    error_body(status, message, param)     # {"error": {"message", "type", "param", "code"}}

Sampling defaults are llama-server's (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05); a request
sets temperature, top_p, seed, max_tokens (or max_completion_tokens), stop, and the llama.cpp
extensions top_k, min_p, repeat_penalty, cache_prompt and ignore_eos; presence_penalty and
frequency_penalty as llama.cpp applies them (over the last 64 tokens). Only n=1. A chat reply's <think>
block goes to reasoning_content (llama-server's reasoning_format, "none" keeps it in the content).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from engine.sampling import SamplingParams

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error",
               503: "server_error"}
ERROR_CODES = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
               500: "internal_error", 503: "server_busy"}
ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_STOP = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code = code or ERROR_CODES.get(status)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code or ERROR_CODES.get(status)}}


@dataclass
class Generation:
    params: SamplingParams
    max_tokens: int | None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    cache_prompt: bool = True
    ignore_eos: bool = False
    model: str | None = None
    extra: dict = field(default_factory=dict)


def _bad(param: str, what: str) -> ApiError:
    return ApiError(400, f"'{param}' {what}", param)


def _number(body: dict, key: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(key, f"must be a number, not {type(v).__name__}")
    if v < lo or v > hi or (lo_open and v == lo):
        raise _bad(key, f"must be in {'(' if lo_open else '['}{lo}, {hi}] (got {v})")
    return float(v)


def _int(body: dict, key: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(key, f"must be a whole number, not {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise _bad(key, f"must be {lo} or more{f' and at most {hi}' if hi is not None else ''} (got {v})")
    return v


def _bool(body: dict, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(key, f"must be true or false, not {v!r}")
    return v


def parse_generation(body: dict) -> Generation:
    """The sampling and length fields shared by chat and completions."""
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise _bad("n", f"must be 1: this server returns one choice per request (got {n!r})")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise _bad("logprobs", "is not supported by this server; leave it out")
    if body.get("tools") or body.get("functions"):
        raise _bad("tools", "are not supported by this server; leave them out")
    p = SamplingParams()
    t = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    min_p = _number(body, "min_p", 0.0, 1.0)
    rp = _number(body, "repeat_penalty", 0.0, 10.0, lo_open=True)
    fp = _number(body, "frequency_penalty", -2.0, 2.0)
    pp = _number(body, "presence_penalty", -2.0, 2.0)
    top_k = _int(body, "top_k", 0)
    seed = _int(body, "seed", -(2 ** 63), 2 ** 64 - 1)
    if t is not None:
        p.temperature = t
    if top_p is not None:
        p.top_p = top_p
    if min_p is not None:
        if min_p >= 1.0:
            raise _bad("min_p", f"must be below 1 (got {min_p})")
        p.min_p = min_p
    if rp is not None:
        p.repeat_penalty = rp
    if fp is not None:
        p.frequency_penalty = fp
    if pp is not None:
        p.presence_penalty = pp
    if top_k is not None:
        p.top_k = top_k
    if seed is not None:
        p.seed = seed % (2 ** 63) if seed >= 0 else None
    mt = _int(body, "max_completion_tokens", 1)
    mt = _int(body, "max_tokens", 1) if mt is None else mt
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > MAX_STOP:
            raise _bad("stop", f"takes at most {MAX_STOP} strings (got {len(stop)})")
        stops = tuple(s for s in stop if s)
    else:
        raise _bad("stop", "must be a string or a list of strings")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("stream_options", "must be an object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "must be a string")
    return Generation(params=p, max_tokens=mt, stop=stops, stream=_bool(body, "stream", False),
                      include_usage=_bool(opts or {}, "include_usage", False),
                      cache_prompt=_bool(body, "cache_prompt", True),
                      ignore_eos=_bool(body, "ignore_eos", False), model=model)


def _text_content(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(where, f"has a content part of type {kind!r}; this server takes text parts only")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(where, "must be a string or a list of text parts")


def parse_messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(where, "must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role", f"must be one of {', '.join(sorted(ROLES))} (got {role!r})")
        out.append({"role": "system" if role == "developer" else role,
                    "content": _text_content(m.get("content"), f"{where}.content")})
    return out


def parse_prompt(body: dict) -> str | list[int]:
    """Completions' prompt: a string, or token ids (a list of one of either is accepted too)."""
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return list(p)
    if isinstance(p, list) and len(p) > 1 and all(isinstance(x, (str, list)) for x in p):
        raise _bad("prompt", "must be one prompt: this server returns one choice per request")
    raise _bad("prompt", "must be a string or a non-empty list of token ids")


def check_completion_extras(body: dict) -> None:
    if body.get("echo"):
        raise _bad("echo", "is not supported by this server; leave it out")
    if body.get("suffix"):
        raise _bad("suffix", "is not supported by this server; leave it out")
    if body.get("best_of") not in (None, 1):
        raise _bad("best_of", "must be 1")


# ---- responses ------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_response(rid: str, model: str, text: str, finish: str, prompt: int, completion: int,
                  reasoning: str | None = None) -> dict:
    message = {"role": "assistant", "content": text, **({"reasoning_content": reasoning} if reasoning else {})}
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage(prompt, completion)}


def reasoning_format(body: dict) -> str:
    """llama-server's reasoning_format: "none" leaves <think> blocks in the content; "deepseek" and "auto"
    (the default) move them to reasoning_content."""
    v = body.get("reasoning_format", "auto")
    if v not in ("auto", "deepseek", "none"):
        raise _bad("reasoning_format", f"must be 'auto', 'deepseek' or 'none' (got {v!r})")
    return v


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish: str | None = None,
               usage_: dict | None = None) -> dict:
    choices = [] if usage_ is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                               "finish_reason": finish}]
    out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def completion_response(rid: str, model: str, text: str, finish: str, prompt: int, completion: int) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": usage(prompt, completion)}


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None = None,
                     usage_: dict | None = None) -> dict:
    choices = [] if usage_ is not None else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
    out = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out


OPEN, CLOSE = "<think>", "</think>"


class ReasoningSplit:
    """A chat reply's reasoning apart from its answer, as llama-server's reasoning_format "deepseek" gives
    them (message.reasoning_content / delta.reasoning_content): a reply that opens with <think> (Qwen3,
    DeepSeek-R1's distillations), or one whose prompt already opened the block (opened: the template ended
    its generation prompt with <think>), reasons until </think>, without the newlines at either end; the
    answer follows, its leading newlines dropped. Any other reply is all content. feed() takes the text as
    it streams and returns the (field, text) pieces it can tell apart so far, holding back what could still
    be a tag or the reasoning's last newlines."""

    def __init__(self, opened: bool = False):
        self.state, self.buf = ("think_start" if opened else "start"), ""
        self.reasoned = opened                 # a block was opened: the reply has a reasoning part

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.buf += text
        out: list[tuple[str, str]] = []
        while True:
            if self.state == "start":
                head = self.buf.lstrip()
                if head.startswith(OPEN):
                    self.state, self.buf, self.reasoned = "think_start", head[len(OPEN):], True
                    continue
                if head and not OPEN.startswith(head):      # not a tag: the reply is all content
                    self.state = "content"
                    continue
                return out                                  # blank, or a tag's start so far: wait
            if self.state in ("think_start", "after"):      # newlines after a tag are dropped
                self.buf = self.buf.lstrip("\n")
                if not self.buf:
                    return out
                self.state = "think" if self.state == "think_start" else "content"
                continue
            if self.state == "think":
                i = self.buf.find(CLOSE)
                if i >= 0:
                    if self.buf[:i].rstrip("\n"):
                        out.append(("reasoning_content", self.buf[:i].rstrip("\n")))
                    self.state, self.buf = "after", self.buf[i + len(CLOSE):]
                    continue
                # held back: a tag's start at the end, and the newlines before it (the reasoning's end?)
                keep = next((k for k in range(min(len(CLOSE) - 1, len(self.buf)), 0, -1)
                             if CLOSE.startswith(self.buf[-k:])), 0)
                cut = len(self.buf[:len(self.buf) - keep].rstrip("\n"))
                if cut:
                    out.append(("reasoning_content", self.buf[:cut]))
                    self.buf = self.buf[cut:]
                return out
            if self.buf:                                    # content
                out.append(("content", self.buf))
                self.buf = ""
            return out

    def finish(self) -> list[tuple[str, str]]:
        """What is held back, at the end of the reply (an unclosed block's tail is reasoning)."""
        rest, self.buf = self.buf, ""
        if self.state == "think" and rest.rstrip("\n"):
            return [("reasoning_content", rest.rstrip("\n"))]
        return [("content", rest)] if rest and self.state in ("start", "content") else []


def split_reasoning(text: str, opened: bool = False) -> tuple[str | None, str]:
    """A whole reply's (reasoning, content), as ReasoningSplit streams them; reasoning None where the
    reply has no reasoning part."""
    s = ReasoningSplit(opened)
    parts = s.feed(text) + s.finish()
    content = "".join(t for f, t in parts if f == "content")
    return ("".join(t for f, t in parts if f == "reasoning_content") if s.reasoned else None), content
