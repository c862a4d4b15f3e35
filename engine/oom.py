"""Running out of memory, said plainly: which failures are really "out of memory", and what the limit was.

An allocation can fail in many voices: MemoryError from Python or numpy, torch's "DefaultCPUAllocator:
can't allocate memory", ENOMEM from mmap of the model file, a shared library that cannot be mapped.
Under a cap (RLIMIT_AS, or a cgroup's memory limit) these all mean the same thing, and a person needs
to hear the model's size and the cap, not a traceback.
"""
from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

from engine.errors import OutOfMemory

_PHRASES = ("can't allocate memory", "cannot allocate memory", "not enough memory", "out of memory",
            "failed to map segment", "std::bad_alloc", "defaultcpuallocator")
# oneDNN's words when it cannot allocate a kernel's workspace: out of memory only under an address-space
# cap (where it was measured), not in general
_PHRASES_UNDER_CAP = ("could not create a primitive",)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, OutOfMemory):
        return True
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    text = str(exc).lower()
    if not isinstance(exc, (RuntimeError, OSError, ImportError, ValueError)):
        return False
    return any(p in text for p in _PHRASES) or (address_space_cap() is not None
                                                 and any(p in text for p in _PHRASES_UNDER_CAP))


def require_address_space(nbytes: int, what: str) -> None:
    """Under an address-space cap, MemoryError unless nbytes more fit below it. For native code that
    aborts the process on a failed allocation (Rust's allocator does) rather than raising: the check
    comes first, so the load fails as out of memory and the engine lives on."""
    cap = address_space_cap()
    if cap is None:
        return
    try:
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return
    if size + nbytes > cap:
        raise MemoryError(f"{what} needs ~{_mib(nbytes)} of address space; {_mib(max(cap - size, 0))} is left "
                          f"under the cap")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def address_space_cap() -> int | None:
    """RLIMIT_AS of this process in bytes, or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def _cgroup_memory_files(pid: int | str, v2_name: str, v1_name: str):
    """The process's memory-cgroup files named v2_name (cgroup v2) or v1_name (v1's memory controller)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            yield Path("/sys/fs/cgroup") / path.lstrip("/") / v2_name
        elif "memory" in controllers.split(","):
            yield Path("/sys/fs/cgroup/memory") / path.lstrip("/") / v1_name


def cgroup_memory_cap(pid: int | str = "self") -> int | None:
    """The memory limit of the process's cgroup (v2 memory.max or v1 memory.limit_in_bytes), None if none."""
    for f in _cgroup_memory_files(pid, "memory.max", "memory.limit_in_bytes"):
        try:
            v = f.read_text().strip()
        except OSError:
            continue
        if v.isdigit() and int(v) < 1 << 60:
            return int(v)
    return None


def limit_text() -> str:
    """What bounds this process's memory, in words."""
    parts = []
    cap = address_space_cap()
    if cap is not None:
        parts.append(f"the engine is capped at {_mib(cap)} of address space (RLIMIT_AS)")
    cg = cgroup_memory_cap()
    if cg is not None:
        parts.append(f"its cgroup allows {_mib(cg)}")
    try:
        import psutil
        parts.append(f"{_mib(psutil.virtual_memory().available)} of RAM is available")
    except Exception:
        pass
    return ", ".join(parts) or "the system refused the memory"


def loading_error(exc: BaseException, path) -> OutOfMemory:
    """The one-line OutOfMemory for a load that ran out of memory: the model's size and the cap."""
    p = Path(path)
    try:
        size = _mib(os.path.getsize(p))
    except OSError:
        size = "unknown size"
    return OutOfMemory(f"out of memory loading {p.name} ({size}): {limit_text()}; try a smaller --ctx, "
                       f"a smaller model, or close other programs")


def oom_kill_counter(pid: int) -> Path | None:
    """The file that counts OOM kills in the process's memory cgroup (v2 memory.events, v1
    memory.oom_control), found while the process lives; None when there is none to read."""
    for f in _cgroup_memory_files(pid, "memory.events", "memory.oom_control"):
        if read_oom_kills(f) is not None:
            return f
    return None


def read_oom_kills(f: Path | None) -> int | None:
    if f is None:
        return None
    try:
        for line in f.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return None
