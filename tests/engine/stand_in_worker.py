"""A worker whose runtime is a tiny stand-in (no model): for plumbing checks before the runtime lands."""
from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass, field


@dataclass
class LoadOptions:
    ctx: int = 4096; batch: int = 512; ubatch: int = 512; threads: int | None = None; mmap: bool = True
    mlock: bool = False; gpu_layers: int = 0; kv_type: str = "f16"; warmup: bool = True


@dataclass
class GenResult:
    tokens: list = field(default_factory=list); text: str = ""; prompt_tokens: int = 0; n_eval: int = 0
    stop_reason: str = "length"; t_prompt_s: float = 0.0; t_gen_s: float = 0.0; ttft_s: float = 0.0


class _Tok:
    n_vocab = 256
    def encode(self, text, add_special=False, parse_special=True):
        return list(text.encode())


class Model:
    arch = "stand-in"
    def __init__(self, path, opts):
        self.path, self.opts, self.n_ctx, self.tokenizer = path, opts, opts.ctx, _Tok()
        self.gguf = types.SimpleNamespace(mlock_report=None)
        self._cache: list[int] = []

    @classmethod
    def load(cls, path, opts, progress=None):
        from engine.errors import BadModelFile
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise BadModelFile(f"{path} is not a GGUF file")
        for i in range(5):
            progress and progress(i / 5, "layers")
            time.sleep(0.01)
        return cls(path, opts)

    def generate(self, prompt, max_tokens, sampler, *, seq_id=0, stop=(), on_token=None, should_cancel=None):
        t0 = time.perf_counter()
        out, reason = [], "length"
        for _ in range(max_tokens):
            if should_cancel and should_cancel():
                reason = "cancelled"; break
            time.sleep(0.02)
            out.append(65); on_token and on_token(65, "A")
        self._cache = list(prompt) + out
        dt = time.perf_counter() - t0
        return GenResult(out, "A" * len(out), len(prompt), len(prompt), reason, 0.001, dt, 0.02)

    def cached_tokens(self, seq_id=0): return list(self._cache)
    def reset(self, seq_id=None): self._cache = []
    def kv_snapshot(self): return {"used": len(self._cache), "total": self.n_ctx}
    def close(self): pass


def main(conn):
    mod = types.ModuleType("engine.runtime")
    mod.Model, mod.LoadOptions, mod.GenResult = Model, LoadOptions, GenResult
    sys.modules["engine.runtime"] = mod
    from engine.worker import main as real_main
    real_main(conn)
