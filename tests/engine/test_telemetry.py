"""Memory figures taken from outside the model: RSS with children, system RAM, VRAM or its absence."""
from __future__ import annotations

import subprocess
import sys

from engine.telemetry import NO_GPU_NOTE, VramProbe, process_rss, system_ram


def test_rss_counts_children():
    alone = process_rss()
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:
        import time
        deadline = time.monotonic() + 20
        while process_rss() - alone < 48 << 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_rss() - alone >= 48 << 20
        assert process_rss(child.pid) >= 64 << 20
    finally:
        child.kill()
        child.wait()


def test_rss_of_a_gone_process_is_zero():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert process_rss(p.pid) == 0


def test_system_ram():
    avail, total = system_ram()
    assert 0 < avail <= total


def test_vram_is_a_list_or_says_why_not():
    probe = VramProbe()
    try:
        vram, note = probe.sample()
        if vram is None:
            assert note == NO_GPU_NOTE or note.startswith("NVML failed")
        else:
            assert note == "" and all(0 <= d["used"] <= d["total"] for d in vram)
    finally:
        probe.close()
