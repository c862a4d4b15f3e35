"""The app's settings: a small dataclass saved as JSON under the config dir.

Fields fall in two kinds: those the engine reads when it loads a model (RELOAD_FIELDS: a change
needs a reload) and those that apply at once (sampling, theme, threads)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from app import paths

THEMES = ("system", "light", "dark")
KV_TYPES = ("f16", "bf16", "q8_0")
RELOAD_FIELDS = ("mmap", "mlock", "gpu_offload", "gpu_layers", "ctx", "batch", "kv_type")
MAX_RECENT = 8


@dataclass
class AppSettings:
    # loading (a change needs a reload)
    mmap: bool = True
    mlock: bool = False
    gpu_offload: bool = False
    gpu_layers: int | None = None          # None: as many as fit ("auto")
    ctx: int = 4096
    batch: int = 512
    kv_type: str = "f16"
    # applies at once
    threads: int | None = None             # None: the engine picks
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int = 512
    theme: str = "system"
    # the local server (always off at start)
    server_port: int = 8080
    server_parallel: int = 2
    server_network: bool = False
    server_api_key: str = ""
    # remembered
    recent_models: list[str] = field(default_factory=list)
    last_model: str | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> "AppSettings":
        """The saved settings; defaults for a missing, unreadable or partly unknown file."""
        path = path or paths.settings_path()
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        known = {f.name for f in fields(cls)}
        s = cls(**{k: v for k, v in raw.items() if k in known}) if isinstance(raw, dict) else cls()
        return s.checked()

    def checked(self) -> "AppSettings":
        d = AppSettings()
        if self.theme not in THEMES:
            self.theme = d.theme
        if self.kv_type not in KV_TYPES:
            self.kv_type = d.kv_type
        if not isinstance(self.ctx, int) or self.ctx < 16:
            self.ctx = d.ctx
        if not isinstance(self.batch, int) or self.batch < 1:
            self.batch = d.batch
        if not isinstance(self.server_port, int) or not 0 <= self.server_port <= 65535:
            self.server_port = d.server_port
        if not isinstance(self.server_parallel, int) or not 1 <= self.server_parallel <= 16:
            self.server_parallel = d.server_parallel
        if not isinstance(self.server_api_key, str):
            self.server_api_key = d.server_api_key
        self.server_network = self.server_network is True
        return self

    def save(self, path: Path | None = None) -> None:
        path = Path(path or paths.settings_path())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        os.replace(tmp, path)

    def copy(self) -> "AppSettings":
        return AppSettings(**{**asdict(self), "recent_models": list(self.recent_models)})

    def needs_reload(self, other: "AppSettings") -> list[str]:
        """The load-time fields that differ between self and other."""
        return [n for n in RELOAD_FIELDS if getattr(self, n) != getattr(other, n)]

    def remember_model(self, path: str) -> None:
        self.recent_models = [path] + [p for p in self.recent_models if p != path][:MAX_RECENT - 1]
        self.last_model = path

    def load_fields(self, gpu_layers_auto: int = 0) -> dict:
        """Keyword arguments of protocol.Load (path aside)."""
        gl = 0
        if self.gpu_offload:
            gl = gpu_layers_auto if self.gpu_layers is None else self.gpu_layers
        return {"ctx": self.ctx, "batch": self.batch, "ubatch": min(self.batch, 512), "threads": self.threads,
                "mmap": self.mmap, "mlock": self.mlock, "gpu_layers": gl, "kv_type": self.kv_type}

    def sampling(self) -> dict:
        """Keyword arguments of protocol.Generate for sampling."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p,
                "repeat_penalty": self.repeat_penalty, "max_tokens": self.max_tokens}
