"""Architectures Cellar runs, one a file, by GGUF `general.architecture`."""
from __future__ import annotations

from engine.errors import UnsupportedModel
from engine.models.base import Transformer
from engine.models.gemma3 import Gemma3
from engine.models.llama import Llama
from engine.models.qwen2 import Qwen2
from engine.models.qwen3 import Qwen3

ARCHITECTURES: dict[str, type[Transformer]] = {"llama": Llama, "gemma3": Gemma3, "qwen2": Qwen2, "qwen3": Qwen3}


def model_class(arch: str) -> type[Transformer]:
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise UnsupportedModel(f"model architecture '{arch}' is not supported (supported: "
                               f"{', '.join(sorted(ARCHITECTURES))}); use a model of one of these")
    return cls
