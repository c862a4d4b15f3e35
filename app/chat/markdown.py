"""Message text as Markdown for QTextDocument, with a [copy] link after every code block."""
from __future__ import annotations

import re

FENCE = re.compile(r"^(\s*)(```|~~~)")


def code_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks in text, in order (an unclosed last block counts)."""
    blocks, cur, fence = [], None, None
    for line in text.splitlines():
        m = FENCE.match(line)
        if cur is None and m:
            cur, fence = [], m.group(2)
        elif cur is not None and m and m.group(2) == fence and line.strip() == fence:
            blocks.append("\n".join(cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    if cur is not None:
        blocks.append("\n".join(cur))
    return blocks


def with_copy_links(text: str) -> str:
    """text with '[copy code](copy:N)' after the N-th closed code block."""
    out, n, fence = [], 0, None
    for line in text.splitlines():
        out.append(line)
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(2)
        elif fence is not None and m and line.strip() == fence:
            fence = None
            out.append("")
            out.append(f"[copy code](copy:{n})")
            out.append("")
            n += 1
    return "\n".join(out)


THINK = re.compile(r"\A\s*<think>(.*?)(</think>|\Z)", re.S)


def split_reasoning(text: str) -> tuple[str | None, bool, str]:
    """A reply that opens with a <think> block (Qwen3, DeepSeek-R1 distillations): (its reasoning, whether
    the block is closed, the answer after it); (None, True, text) for any other reply."""
    m = THINK.match(text)
    if m is None:
        return None, True, text
    return m.group(1).strip(), bool(m.group(2)), text[m.end():].lstrip()


def reply_markdown(text: str) -> str:
    """What a reply shows: its reasoning, if any, quoted under "Thinking…" (while the block is open) or
    "Thought", then the answer with its [copy] links (numbered over the answer's code blocks: answer_code)."""
    thought, closed, answer = split_reasoning(text)
    if thought is None or (not thought and answer):    # no block, or an empty one (thinking off): the answer
        return with_copy_links(answer)
    if not thought:                                    # an empty block so far
        return "" if closed else "*Thinking…*"
    quoted = "\n".join("> " + line if line.strip() else ">" for line in thought.splitlines())
    return f"*{'Thought' if closed else 'Thinking…'}*\n\n{quoted}\n\n{with_copy_links(answer)}"


def answer_code(text: str) -> list[str]:
    """The code blocks of a reply's answer (its reasoning left out), as reply_markdown numbers them."""
    return code_blocks(split_reasoning(text)[2])
