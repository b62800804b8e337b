"""The window's settings files: open and save, presets (built-in and the user's own), a new
project, and undo for each of them.

Opening a settings file replaces every setting; applying a preset changes the training recipe
and keeps the project (folders, model, prompts, output, metadata: `trainer.presets`). Each of
these can be undone (Edit > Undo), and the status line says what changed. Saved presets go to
the user's presets folder with a `.toml` name, so the Presets menu and the Load dialog list them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from app.file_dialogs import pick_file, pick_save_file
from app.session import config_dir, remember_file
from trainer.config import TrainConfig
from trainer.config_io import ConfigError, build_config, load_config_data, preset_path, save_config
from trainer.presets import apply_preset, missing_paths, recipe_only, setting_changes

if TYPE_CHECKING:
    from app.main import MainWindow

MAX_UNDO = 20
SHOWN_CHANGES = 3  # changes named in the status line; the rest are counted


def user_presets_dir() -> Path:
    return config_dir() / "presets"


def user_presets() -> list[Path]:
    folder = user_presets_dir()
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []


class SettingsFiles:
    """Loading and saving the window's config, with undo. `window.binder` holds the config."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self.undo_stack: list[tuple[str, TrainConfig]] = []
        self.last_message: QMessageBox | None = None

    # -- changing the whole config ---------------------------------------------------------
    def replace(self, config: TrainConfig, label: str) -> list[str]:
        """Show `config`; the one before it can be brought back with `undo`."""
        before = self.window.binder.config
        changes = setting_changes(before, config)
        self.undo_stack = (self.undo_stack + [(label, before)])[-MAX_UNDO:]
        self.window.binder.load(config)
        self.window.update_undo()
        # the status line names the settings in words; its tooltip has every old -> new value
        names = [change.split(":")[0].split(".")[-1].replace("_", " ") for change in changes]
        named = ", ".join(names[:SHOWN_CHANGES])
        more = f" and {len(names) - SHOWN_CHANGES} more" if len(names) > SHOWN_CHANGES else ""
        status = self.window.statusBar()
        status.setToolTip("\n".join(changes))
        status.showMessage(f"{label}: {len(changes)} setting(s) changed ({named}{more}). Edit > "
                           "Undo brings back the earlier settings." if changes else
                           f"{label}: no setting changed.")
        return changes

    def undo(self) -> bool:
        if not self.undo_stack:
            return False
        label, config = self.undo_stack.pop()
        self.window.binder.load(config)
        self.window.update_undo()
        self.window.statusBar().showMessage(f"Undone: {label}")
        return True

    def new_project(self) -> None:
        self.window.config_path = None
        self.replace(TrainConfig(), "New project")

    def _read(self, path: Path) -> TrainConfig | None:
        try:
            return build_config(load_config_data(Path(path)), source=str(path))
        except ConfigError as error:
            self._tell("Can't load these settings", f"{path} can't be loaded:\n\n{error}")
            return None

    def load_file(self, path: Path, remember: bool = True) -> bool:
        """Every setting from a settings file (File > Open settings, a run's config.toml)."""
        config = self._read(path)
        if config is None:
            return False
        self.replace(config, f"Loaded {path}")
        if remember:
            self.window.config_path = Path(path)
            if self.window.remember:
                remember_file(Path(path))
        self._warn_missing(config, Path(path))
        return True

    def load_preset(self, name_or_path: str) -> bool:
        """A preset's training recipe; the project's folders, model, output and metadata stay."""
        path = preset_path(name_or_path)
        preset = self._read(path)
        if preset is None:
            return False
        try:
            config = apply_preset(self.window.binder.config, preset)
        except ValueError as error:  # the project's own values don't fit the recipe
            self._tell("Can't apply this preset", f"{path} can't be applied:\n\n{error}")
            return False
        self.replace(config, f"Preset {path.stem}")
        return True

    def _warn_missing(self, config: TrainConfig, source: Path) -> None:
        missing = missing_paths(config)
        if missing:
            self._tell("Some paths in these settings don't exist",
                       f"{source} is loaded, but these are not on this computer:\n\n"
                       + "\n".join(missing)
                       + "\n\nPick them again in the Dataset and Base model sections.")

    def _tell(self, title: str, text: str) -> None:
        box = QMessageBox(QMessageBox.Warning, title, text, parent=self.window)
        box.setTextFormat(Qt.PlainText)  # values from the file are never rich text
        self.last_message = box
        box.open()

    # -- saving ----------------------------------------------------------------------------
    def save(self, path: Path, only_changes: bool = False,
             config: TrainConfig | None = None) -> Path:
        path = Path(path)
        if path.suffix.lower() != ".toml":  # else the Load dialog (*.toml) can't list it
            path = path.with_name(path.name + ".toml")
        save_config(config or self.window.binder.config, path, only_changes=only_changes)
        if self.window.remember and not only_changes:
            remember_file(path)
        self.window.statusBar().showMessage(f"Saved {path}")
        return path

    def save_preset(self, name_or_path: str) -> Path:
        """The recipe (what differs from the defaults, without the project's folders, model,
        prompts, output and metadata), under the user's presets folder unless a path is
        given; the Presets menu lists it from then on."""
        path = Path(name_or_path)
        if not path.is_absolute():
            path = user_presets_dir() / path
        saved = self.save(path, only_changes=True,
                          config=recipe_only(self.window.binder.config))
        self.window.fill_presets_menu()
        return saved

    # -- dialogs ---------------------------------------------------------------------------
    def ask_open(self) -> None:
        path = pick_file(self.window, "Open settings", "settings", "Settings (*.toml)")
        if path:
            self.load_file(Path(path))

    def ask_save(self) -> None:
        path = pick_save_file(self.window, "Save settings", "settings", "Settings (*.toml)")
        if path:
            self.save(Path(path))

    def ask_load_preset(self) -> None:
        path = pick_file(self.window, "Load a preset", "preset", "Presets (*.toml)",
                         fallback=str(user_presets_dir()))
        if path:
            self.load_preset(path)

    def ask_save_preset(self) -> None:
        user_presets_dir().mkdir(parents=True, exist_ok=True)
        path = pick_save_file(self.window, "Save as preset", "preset", "Presets (*.toml)",
                              fallback=str(user_presets_dir()))
        if path:
            self.save_preset(path)
