"""Measuring where memory goes, from outside the model: a process's RSS (with its children), the
system's available RAM, and NVIDIA VRAM through NVML. No torch, no Qt: the worker and the app can
both use it."""
from __future__ import annotations

import threading

import psutil

NO_GPU_NOTE = "no NVIDIA GPU"


def process_rss(pid: int | None = None) -> int:
    """Resident bytes of a process and all its children; 0 when it is gone."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def system_ram() -> tuple[int, int]:
    """(available, total) bytes of system RAM."""
    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)


class VramProbe:
    """VRAM per NVIDIA device via pynvml; `sample()` gives (None, "no NVIDIA GPU") when NVML can't start."""

    def __init__(self):
        self._lock = threading.Lock()
        self._nvml = None
        self._note = ""
        self._tried = False

    def _init(self) -> None:
        self._tried = True
        try:
            import pynvml
            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:                      # no library, no driver, no device: all the same to us
            self._nvml, self._note = None, NO_GPU_NOTE

    def sample(self) -> tuple[list[dict] | None, str]:
        with self._lock:
            if not self._tried:
                self._init()
            nv = self._nvml
            if nv is None:
                return None, self._note
            try:
                out = []
                for i in range(nv.nvmlDeviceGetCount()):
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    mem = nv.nvmlDeviceGetMemoryInfo(h)
                    name = nv.nvmlDeviceGetName(h)
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    out.append({"index": i, "name": name, "used": int(mem.used), "total": int(mem.total)})
                return (out, "") if out else (None, NO_GPU_NOTE)
            except Exception as e:
                return None, f"NVML failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:
                    pass
            self._nvml, self._tried = None, False
