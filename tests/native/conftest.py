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
