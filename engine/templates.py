"""Chat templates: the GGUF's own Jinja template, rendered in a sandbox, or a built-in one by arch.

A template inside a GGUF is untrusted input (a peer shipped remote code execution through one), so it
is rendered with jinja2's ImmutableSandboxedEnvironment, with a bound on output size and on time: a
template that reaches for Python internals, loops forever or builds a huge string ends in a
TemplateError with one line, never in a hang.
"""
from __future__ import annotations

import ctypes
import datetime
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from engine.errors import TemplateError

MAX_OUTPUT_CHARS = 4_000_000
MAX_TEMPLATE_CHARS = 200_000
RENDER_TIMEOUT_S = 2.0
BUILTIN_DIR = Path(__file__).with_name("builtin_templates")
BUILTIN_BY_ARCH = {"gemma3": "gemma", "gemma2": "gemma", "gemma": "gemma"}


class _TemplateTimeout(BaseException):
    """Raised inside the rendering thread when it runs past its time."""


def _raise_exception(message: str):
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(str(fmt))


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus a bound on the strings and lists that `*` and `**` can build."""
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise TemplateError("the chat template raised a number to a huge power; it is refused")
        elif isinstance(left, (str, list, tuple)) or isinstance(right, (str, list, tuple)):
            seq, times = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
            if isinstance(times, int) and len(seq) * times > MAX_OUTPUT_CHARS:
                raise TemplateError(f"the chat template tried to build a sequence of {len(seq) * times} "
                                    "items; it is refused")
        return super().call_binop(context, operator, left, right)


def _env() -> ImmutableSandboxedEnvironment:
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        undefined=jinja2.Undefined, autoescape=False)
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    env.filters["tojson"] = _tojson
    return env


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_) -> str:
    import json
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=8)
def _compile(source: str) -> jinja2.Template:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the chat template is {len(source)} characters long, over the "
                            f"{MAX_TEMPLATE_CHARS} limit; pass --raw or use a model with a sane template")
    try:
        return _env().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"the chat template has a syntax error on line {e.lineno}: {e.message}; "
                            "pass --raw to skip it") from None


def builtin_template(name: str) -> str:
    return (BUILTIN_DIR / f"{name}.jinja").read_text()


def chat_template_for(g) -> str:
    """The template to use for a loaded GGUF: its own, else a built-in chosen by architecture."""
    own = g.get("tokenizer.chat_template") if hasattr(g, "get") else None
    if isinstance(own, str) and own.strip():
        return own
    return builtin_template(BUILTIN_BY_ARCH.get(getattr(g, "arch", ""), "chatml"))


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", timeout_s: float = RENDER_TIMEOUT_S,
                **extra: Any) -> str:
    """Render `messages` ([{"role", "content"}]) with `template` in the sandbox, bounded in time and size."""
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TemplateError("each chat message needs a string 'role' and a string 'content'")
    tpl = _compile(template)
    ctx = dict(messages=messages, add_generation_prompt=add_generation_prompt,
               bos_token=bos_token, eos_token=eos_token, **extra)
    result: dict[str, Any] = {}

    def work():
        try:
            out, size = [], 0
            for chunk in tpl.generate(**ctx):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise TemplateError(f"the chat template produced more than {MAX_OUTPUT_CHARS} "
                                        "characters; it is refused (pass --raw to skip it)")
                out.append(chunk)
            result["text"] = "".join(out)
        except _TemplateTimeout:
            result["error"] = TemplateError(f"the chat template ran longer than {timeout_s:g} s and "
                                            "was stopped; pass --raw to skip it")
        except SecurityError as e:
            result["error"] = TemplateError(f"the chat template tried something the sandbox forbids "
                                            f"({e}); it is refused")
        except TemplateError as e:
            result["error"] = e
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError,
                AttributeError, ZeroDivisionError, OverflowError, RecursionError, MemoryError) as e:
            result["error"] = TemplateError(f"the chat template failed: {type(e).__name__}: "
                                            f"{str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))

    t = threading.Thread(target=work, name="template-render", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(_TemplateTimeout))
        t.join(1.0)
        if "error" not in result:
            result["error"] = TemplateError(f"the chat template ran longer than {timeout_s:g} s and "
                                            "was stopped; pass --raw to skip it")
    if "error" in result:
        raise result["error"]
    return result["text"]
