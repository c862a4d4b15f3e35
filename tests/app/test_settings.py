"""Settings: JSON round trip, bad files fall back to defaults, reload-needing changes are named."""
from __future__ import annotations

from app.settings import AppSettings


def test_round_trip_and_defaults_for_bad_files(tmp_path):
    p = tmp_path / "settings.json"
    s = AppSettings(ctx=2048, mmap=False, theme="dark", temperature=0.3)
    s.remember_model("/m/a.gguf")
    s.save(p)
    back = AppSettings.load(p)
    assert back == s and back.recent_models == ["/m/a.gguf"]
    p.write_text("{not json")
    assert AppSettings.load(p) == AppSettings()
    p.write_text('{"theme": "neon", "ctx": -5, "unknown_key": 1}')
    assert (AppSettings.load(p).theme, AppSettings.load(p).ctx) == ("system", 4096)


def test_needs_reload_names_only_load_time_fields():
    a = AppSettings()
    b = a.copy()
    b.temperature, b.theme = 0.1, "light"
    assert a.needs_reload(b) == []
    b.ctx, b.mmap = 1024, False
    assert a.needs_reload(b) == ["mmap", "ctx"]
    assert b.load_fields()["ctx"] == 1024 and b.load_fields()["mmap"] is False
