"""Cellar's engine: GGUF loading, tokenizers, models, KV cache, sampling. Never imports Qt."""
__version__ = "0.1.0"
