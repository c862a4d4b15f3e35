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
