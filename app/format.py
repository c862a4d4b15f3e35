"""Numbers as people read them."""
from __future__ import annotations

MiB = 1 << 20
GiB = 1 << 30


def size(nbytes: int | float | None) -> str:
    if nbytes is None:
        return "—"
    n = float(nbytes)
    if abs(n) >= GiB:
        return f"{n / GiB:.2f} GiB"
    if abs(n) >= MiB:
        return f"{n / MiB:.0f} MiB"
    if abs(n) >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{int(n)} B"


def count(n: int) -> str:
    """134515008 -> '135 M'."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return str(n)


def ago(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    return f"{s // 3600} h ago"
