"""The first start: `make run` fetches the default model and the window starts on it; a .gguf on the
command line opens its memory preview; otherwise the last model (the window's own) or the welcome panel."""
from __future__ import annotations

import pytest

from app.main import first_model
from tests.app.conftest import make_window


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setenv("CELLAR_MODELS_DIR", str(d))
    return d


def test_first_start_loads_the_default_model_once_fetched(models_dir):
    assert first_model([], None) is None                         # not fetched: the welcome panel
    (models_dir / "x.gguf").write_bytes(b"GGUF")
    from engine.pull import known
    f = models_dir / known("default").filename
    f.write_bytes(b"GGUF")
    assert first_model([], None) is None                         # not verified (no .ok): not loaded
    f.with_suffix(f.suffix + ".ok").write_text("ok")
    assert first_model([], None) == ("load", str(f))
    assert first_model([], "/somewhere/else.gguf") is None        # a model was loaded before: the window's own
    other = models_dir / "x.gguf"
    assert first_model([str(other)], None) == ("preview", str(other))
    assert first_model([str(models_dir / "missing.gguf")], None) == ("load", str(f))


@pytest.mark.slow
def test_load_when_ready_waits_for_the_engine(qtbot, smollm2_path):
    w = make_window(qtbot, start_engine=True)
    try:
        w.settings.ctx = 512
        w.load_when_ready(str(smollm2_path))                      # the engine is still starting
        with qtbot.waitSignal(w.bridge.modelLoaded, timeout=180000) as ev:
            pass
        assert ev.args[0].path == str(smollm2_path)
        assert "ctx 512" in w.top.load_info.text()
    finally:
        w.bridge.stop_blocking()
        w.store.close()
