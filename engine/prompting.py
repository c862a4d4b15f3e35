"""Turning what a person typed into tokens: chat template mode and raw completion mode.

Shared by the CLI, the worker and the server so that all three send a model the same tokens.
"""
from __future__ import annotations

from engine.templates import chat_template_for, render_chat


def _special_text(tok, token_id) -> str:
    if token_id is None or token_id < 0:
        return ""
    return tok.token_to_piece(token_id).decode("utf-8", errors="replace")


def chat_tokens(model, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
    """Render `messages` with the model's chat template (sandboxed) and tokenize, special text parsed.

    BOS is added as the metadata asks unless the template already wrote it (no double BOS)."""
    tok = model.tokenizer
    bos, eos = _special_text(tok, tok.bos_id), _special_text(tok, tok.eos_id)
    text = render_chat(chat_template_for(model.gguf), messages, add_generation_prompt=add_generation_prompt,
                       bos_token=bos, eos_token=eos)
    starts_with_bos = bool(bos) and text.startswith(bos)
    ids = tok.encode(text, add_special=not starts_with_bos, parse_special=True)
    return ids


def raw_tokens(model, text: str, *, continuing: bool = False) -> list[int]:
    """Plain completion: BOS exactly as the model's metadata asks (none when continuing a session)."""
    return model.tokenizer.encode(text, add_special=not continuing, parse_special=True)
