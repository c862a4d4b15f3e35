"""Fixtures shared by the native kernel tests."""
from __future__ import annotations

import pytest

from engine import kernels


@pytest.fixture(params=[1, 2])
def threads(request):
    """The native pool at 1, then 2 threads (restored after)."""
    before = kernels.get_threads()
    kernels.set_threads(request.param)
    yield request.param
    kernels.set_threads(before)


@pytest.fixture(autouse=True)
def _isa_restored():
    """Each test leaves the library's instruction set as it found it: the fixtures here move it and put
    back the best one, which under CELLAR_ISA=avx2 (the AVX2 path emulated) left later tests running the
    VNNI kernels while cpu_features still answered for AVX2."""
    before = kernels.ISA
    yield
    if kernels.AVAILABLE and kernels.ISA != before:
        kernels.set_isa(before)
