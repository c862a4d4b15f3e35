"""Shared fixtures: the two real models (pulled and verified once, then cached) and tiny GGUFs."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _model(name: str):
    from engine.pull import pull
    return pull(name)


@pytest.fixture(scope="session")
def smollm2_path():
    return _model("smollm2")


@pytest.fixture(scope="session")
def gemma3_path():
    return _model("gemma3")
