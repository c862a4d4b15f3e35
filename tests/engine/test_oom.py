"""engine/oom.py: which failures mean out of memory, and the headroom check before native code that
aborts the process instead of raising (HF tokenizers' Rust allocator)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine import oom

ROOT = Path(__file__).resolve().parents[2]

UNDER_A_CAP = """
import resource
from engine import oom
size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (64 << 20), resource.RLIM_INFINITY))
oom.require_address_space(16 << 20, "a small thing")          # fits
try:
    oom.require_address_space(256 << 20, "a big thing")
    print("no error")
except MemoryError as e:
    print("MemoryError:", e)
print("primitive:", oom.is_out_of_memory(RuntimeError("could not create a primitive")))
"""


def test_headroom_check_and_onednn_words_under_an_address_space_cap():
    r = subprocess.run([sys.executable, "-c", UNDER_A_CAP], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("MemoryError: a big thing needs ~256 MiB of address space;"), lines
    assert lines[0].endswith("left under the cap")
    assert lines[1] == "primitive: True"


def test_without_a_cap_nothing_is_refused_and_onednn_words_are_not_memory():
    if oom.address_space_cap() is not None:
        pytest.skip("the test runner itself runs under an address-space cap")
    oom.require_address_space(1 << 50, "anything")
    assert not oom.is_out_of_memory(RuntimeError("could not create a primitive"))
    assert oom.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert oom.is_out_of_memory(MemoryError())
    assert not oom.is_out_of_memory(RuntimeError("shape mismatch"))
