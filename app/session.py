"""What the window remembers between sessions: the last settings and recently used files.

The last session's settings are a full config TOML in the user's config folder (so a newer or
broken file is simply ignored, never a crash); recent files and the runs folder live in
QSettings.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

from trainer.config import TrainConfig
from trainer.config_io import ConfigError, build_config, read_toml, save_config

MAX_RECENT = 8


CONFIG_DIR_ENV = "LORA_STUDIO_CONFIG_DIR"  # tests (and portable installs) point this elsewhere


def config_dir() -> Path:
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    folder = QStandardPaths.writableLocation(QStandardPaths.AppConfigLocation)
    return Path(folder) if folder else Path.home() / ".config" / "lora-studio"


def settings() -> QSettings:
    return QSettings(str(config_dir() / "settings.ini"), QSettings.IniFormat)


def session_file() -> Path:
    return config_dir() / "last-session.toml"


def save_session(config: TrainConfig) -> None:
    try:
        save_config(config, session_file())
    except OSError:
        pass  # remembering is a convenience; never stop the window closing


def load_session() -> tuple[TrainConfig | None, str]:
    """(the last session's settings, '') or (None, why they could not be restored). A file
    this version refuses is moved aside, never overwritten by the next save."""
    path = session_file()
    if not path.exists():
        return None, ""
    try:
        return build_config(read_toml(path), source=str(path)), ""
    except (ConfigError, OSError) as error:
        kept = path.with_name("last-session.unreadable.toml")
        try:
            os.replace(path, kept)
        except OSError:
            return None, f"The last session's settings could not be restored: {error}"
        return None, (f"The last session's settings could not be restored ({error}); they "
                      f"are kept in {kept}.")


def recent_files() -> list[str]:
    value = settings().value("recent", [])
    if isinstance(value, str):
        value = [value]
    return [v for v in (value or []) if Path(v).exists()]


def remember_file(path: Path) -> list[str]:
    files = [str(path)] + [f for f in recent_files() if f != str(path)]
    settings().setValue("recent", files[:MAX_RECENT])
    return files[:MAX_RECENT]
