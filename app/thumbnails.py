"""The dataset's images as a thumbnail grid, loaded in a worker thread, with each image's
caption editable and saved to its caption file.

Decoding runs on a QThreadPool thread with QImage (safe off the GUI thread); each finished
thumbnail comes back through a queued signal, so a 1,000-image folder never freezes the window.
A newer listing makes older loads stop early (a generation number).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QIcon, QImage, QImageReader, QPixmap
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPlainTextEdit,
                               QPushButton, QVBoxLayout, QWidget)

from app.binding import Binder

SIZE = 96
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_LISTED = 5000


def dataset_images(folders: list[Path]) -> list[Path]:
    """Images in the folders and their direct subfolders (kohya `N_name`), sorted."""
    found: list[Path] = []
    for folder in folders:
        try:
            entries = sorted(Path(folder).iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir():
                try:
                    found += sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                except OSError:
                    pass
            elif entry.suffix.lower() in IMAGE_SUFFIXES:
                found.append(entry)
        if len(found) >= MAX_LISTED:
            break
    return found[:MAX_LISTED]


class _Signals(QObject):
    loaded = Signal(int, int, QImage)  # generation, index, thumbnail (null when unreadable)
    done = Signal(int)


class _Loader(QRunnable):
    def __init__(self, generation: int, paths: list[Path], owner: ThumbnailGrid) -> None:
        super().__init__()
        self.generation, self.paths, self.owner = generation, paths, owner
        self.signals = owner.signals

    def run(self) -> None:
        for index, path in enumerate(self.paths):
            if self.owner.generation != self.generation:
                return  # a newer listing replaced this one
            reader = QImageReader(str(path))
            size = reader.size()
            if size.isValid() and size.width() > 0 and size.height() > 0:
                reader.setScaledSize(size.scaled(SIZE, SIZE, Qt.KeepAspectRatio))
            image = reader.read()
            self.signals.loaded.emit(self.generation, index, image)
        self.signals.done.emit(self.generation)


class ThumbnailGrid(QWidget):
    loaded_all = Signal()

    def __init__(self, binder: Binder) -> None:
        super().__init__()
        self.binder = binder
        self.generation = 0
        self.paths: list[Path] = []
        self.loaded = 0
        self.signals = _Signals()
        self.signals.loaded.connect(self._thumbnail)
        self.signals.done.connect(self._done)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(2)
        self.grid = QListWidget()
        self.grid.setViewMode(QListWidget.IconMode)
        self.grid.setIconSize(QSize(SIZE, SIZE))
        self.grid.setGridSize(QSize(SIZE + 16, SIZE + 22))
        self.grid.setResizeMode(QListWidget.Adjust)
        self.grid.setMovement(QListWidget.Static)
        self.grid.setUniformItemSizes(True)
        self.grid.setMinimumHeight(180)
        self.grid.currentItemChanged.connect(self._select)
        self.count = QLabel("No images yet.")
        self.count.setTextFormat(Qt.PlainText)
        self.caption = QPlainTextEdit()
        self.caption.setPlaceholderText("Pick an image to see and edit its caption.")
        self.caption.setMaximumHeight(70)
        self.caption.setToolTip("The caption of the selected image, saved to its caption file.")
        self.save_button = QPushButton("Save caption")
        self.save_button.setToolTip("Write this caption to the image's caption file.")
        self.save_button.clicked.connect(self.save_caption)
        self.save_button.setEnabled(False)
        self.caption_file = QLabel()
        self.caption_file.setTextFormat(Qt.PlainText)
        row = QHBoxLayout()
        row.addWidget(self.caption, 1)
        row.addWidget(self.save_button, 0, Qt.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.count)
        layout.addWidget(self.grid, 1)
        layout.addWidget(self.caption_file)
        layout.addLayout(row)
        self._placeholder = QPixmap(SIZE, SIZE)
        self._placeholder.fill(Qt.lightGray)
        binder.changed.connect(self._config_changed)

    def _config_changed(self, key: str) -> None:
        if key in ("*", "dataset.folders"):
            self.refresh()

    def refresh(self) -> None:
        """List the images again and load their thumbnails in the background."""
        self.generation += 1
        self.paths = dataset_images([f.path for f in self.binder.config.dataset.folders])
        self.loaded = 0
        self.grid.clear()
        icon = QIcon(self._placeholder)
        for path in self.paths:
            item = QListWidgetItem(icon, path.name)
            item.setToolTip(str(path))
            item.setData(Qt.UserRole, str(path))
            self.grid.addItem(item)
        self.count.setText(f"{len(self.paths)} images - loading thumbnails..." if self.paths
                           else "No images yet.")
        if self.paths:
            self.pool.start(_Loader(self.generation, list(self.paths), self))

    def _thumbnail(self, generation: int, index: int, image: QImage) -> None:
        if generation != self.generation or index >= self.grid.count():
            return
        item = self.grid.item(index)
        if image.isNull():
            item.setForeground(Qt.red)
            item.setToolTip(f"{item.toolTip()}\nThis file can't be read as an image.")
        else:
            item.setIcon(QIcon(QPixmap.fromImage(image)))
        self.loaded += 1

    def _done(self, generation: int) -> None:
        if generation == self.generation:
            self.count.setText(f"{len(self.paths)} images")
            self.loaded_all.emit()

    # -- captions --------------------------------------------------------------------------
    def caption_path(self, image: Path) -> Path:
        return image.with_suffix(self.binder.config.dataset.caption_extension)

    def _select(self, item: QListWidgetItem | None, _previous=None) -> None:
        if item is None:
            self.caption.clear()
            self.save_button.setEnabled(False)
            return
        path = self.caption_path(Path(item.data(Qt.UserRole)))
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        self.caption.setPlainText(text.strip())
        self.caption_file.setText(f"{path.name}" + ("" if path.exists() else " (new file)"))
        self.save_button.setEnabled(True)

    def save_caption(self) -> Path | None:
        item = self.grid.currentItem()
        if item is None:
            return None
        path = self.caption_path(Path(item.data(Qt.UserRole)))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(self.caption.toPlainText().strip() + "\n")
        os.replace(tmp, path)
        self.caption_file.setText(f"{path.name} saved")
        return path

    def stop(self) -> None:
        self.generation += 1
        self.pool.waitForDone(2000)
