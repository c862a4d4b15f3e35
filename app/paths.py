"""Where the app keeps its files. CELLAR_DATA_DIR puts everything (conversations, settings, window
state) under one folder instead of the platform's places; tests use it to work in a temp dir."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV = "CELLAR_DATA_DIR"


def data_dir() -> Path:
    override = os.environ.get(ENV)
    p = Path(override) if override else Path(platformdirs.user_data_dir("cellar"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def config_dir() -> Path:
    override = os.environ.get(ENV)
    p = Path(override) / "config" if override else Path(platformdirs.user_config_dir("cellar"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def db_path() -> Path:
    return data_dir() / "conversations.sqlite3"


def settings_path() -> Path:
    return config_dir() / "settings.json"


def ui_state_path() -> Path:
    return config_dir() / "window.ini"
