"""File dialogs that open where the user last was, for each kind of file.

Image folders, base models, settings files, presets, run folders: each kind remembers the
folder it was last picked from (in the window's settings), so the second model or dataset is
one click away instead of a walk from the home folder.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QWidget

from app.session import settings


def start_folder(kind: str, fallback: str = "") -> str:
    """The folder last used for `kind`, if it still exists; else `fallback`."""
    value = settings().value(f"last_folder/{kind}", "")
    return str(value) if value and Path(str(value)).is_dir() else fallback


def remember_folder(kind: str, path: Path | str) -> None:
    """Remember where `path` is (a folder itself, or a file's folder) for the next `kind`."""
    path = Path(path)
    settings().setValue(f"last_folder/{kind}", str(path if path.is_dir() else path.parent))


def pick_folder(parent: QWidget, title: str, kind: str, fallback: str = "") -> str:
    """A folder ('' when cancelled), starting where the last `kind` folder was picked. A picked
    folder's parent is remembered: the next pick is usually a sibling."""
    path = QFileDialog.getExistingDirectory(parent, title, start_folder(kind, fallback))
    if path:
        remember_folder(kind, Path(path).parent)
    return path


def pick_file(parent: QWidget, title: str, kind: str, filters: str, fallback: str = "") -> str:
    path, _ = QFileDialog.getOpenFileName(parent, title, start_folder(kind, fallback), filters)
    if path:
        remember_folder(kind, path)
    return path


def pick_save_file(parent: QWidget, title: str, kind: str, filters: str,
                   fallback: str = "") -> str:
    path, _ = QFileDialog.getSaveFileName(parent, title, start_folder(kind, fallback), filters)
    if path:
        remember_folder(kind, path)
    return path
