"""Turning what a person typed into tokens: chat template mode and raw completion mode.

Shared by the CLI, the worker and the server so that all three send a model the same tokens.
"""
from __future__ import annotations

from engine.errors import BadRequest
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


def reply_room(n_ctx: int, max_tokens: int) -> int:
    """Tokens of the context a chat prompt leaves for the reply: its max_tokens, at most a quarter of the
    context (a longer reply still runs: the runtime shifts the context while it generates)."""
    quarter = max(1, n_ctx // 4)
    return quarter if max_tokens <= 0 else min(max_tokens, quarter)


def after_shift(n_ctx: int, room: int) -> int:
    """The most tokens a prompt keeps once some had to go: room for the reply and a further quarter of the
    context free, so the next turns reuse the cached prefix instead of dropping a little each time."""
    return n_ctx - room - n_ctx // 4


def fit_raw(history: list[int], new: list[int], n_ctx: int, room: int) -> tuple[list[int], int]:
    """A plain-text continuation (history, then new) that would leave less than `room` tokens of the
    context: the oldest tokens of history go (its first, BOS or not, stays), down to after_shift.
    -> (prompt, tokens left out)."""
    if not history or len(history) + len(new) + room <= n_ctx:
        return history + new, 0
    keep = max(0, after_shift(n_ctx, room) - len(new) - 1)
    dropped = max(0, len(history) - 1 - keep)
    return history[:1] + history[1 + dropped:] + new, dropped


def leading_system(messages: list[dict]) -> int:
    """How many system messages open the conversation (never the last message: that one is answered)."""
    head = 0
    while head < len(messages) - 1 and messages[head].get("role") == "system":
        head += 1
    return head


def fit_chat(model, messages: list[dict], *, room: int, left_out: int = 0) -> tuple[list[int], int]:
    """chat_tokens for a conversation that may have outgrown the context: the oldest messages after the
    leading system ones are left out, whole turns from a user message on (templates want the roles to
    alternate), until the prompt leaves `room` tokens for the reply. Once some must go, enough go to free
    another quarter of the context, so the next turns reuse the cached prefix instead of dropping one more
    message (and evaluating the whole prompt again) each time. left_out: how many the previous turn of the
    same conversation left out (kept out, so its prefix stays). -> (tokens, messages left out).

    Raises BadRequest when the last message alone (with the system messages) does not leave the room."""
    n_ctx = int(model.n_ctx)
    head = leading_system(messages)
    body = messages[head:]
    # where the kept part may start: a user message (or the last message), at or after left_out
    starts = [i for i, m in enumerate(body) if m.get("role") == "user" or i == len(body) - 1]
    starts = [i for i in starts if i >= min(left_out, len(body) - 1)] or [len(body) - 1]

    def render(i: int) -> list[int]:
        return chat_tokens(model, messages[:head] + body[i:])

    ids = render(starts[0])
    if len(ids) + room <= n_ctx:
        return ids, starts[0]
    last = render(starts[-1])
    if len(last) + room > n_ctx:
        raise BadRequest(f"the last message takes {len(last)} tokens with the chat template and the context holds "
                         f"{n_ctx}, {room} of them kept for the reply; shorten the message or load the model with "
                         "a larger context")
    # the fewest messages left out that bring the prompt under the target (binary search: the prompt
    # only shrinks as more go); the target frees a further quarter of the context where it can
    target = max(after_shift(n_ctx, room), len(last))
    lo, hi, best = 1, len(starts) - 1, (len(starts) - 1, last)
    while lo <= hi:
        mid = (lo + hi) // 2
        t = render(starts[mid])
        if len(t) <= target:
            best, hi = (mid, t), mid - 1
        else:
            lo = mid + 1
    return best[1], starts[best[0]]
