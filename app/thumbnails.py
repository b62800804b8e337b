"""The dataset's images as a thumbnail grid, listed and decoded in a worker thread, with each
image's caption editable and saved to its caption file.

The grid is a QListView over a list model, so showing 5,000 names costs the window one model
reset, not 5,000 items. Listing the folders and decoding (QImageReader, safe off the GUI thread)
run on a QThreadPool thread; results come back through queued signals in batches of at most
~50 ms of work, so a 10,000-image folder never freezes the window. A newer listing makes older
loads stop early (a generation number). The same listing counts each folder's images for the
folder table and the steps calculator: listing a cold 10,000-image folder took 220 ms, too long
for the GUI thread.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import (QAbstractListModel, QModelIndex, QObject, QRunnable, QSize, Qt,
                            QThreadPool, Signal)
from PySide6.QtGui import QIcon, QImage, QImageReader, QPalette, QPixmap
from PySide6.QtWidgets import (QApplication, QHBoxLayout, QLabel, QListView, QPlainTextEdit,
                               QPushButton, QVBoxLayout, QWidget)

from app.binding import Binder
from app.colours import ERROR, tone_colour
from trainer.atomic import atomic_write_text

SIZE = 96
IMAGE_NAME = re.compile(r"\.(png|jpe?g|webp|bmp)\Z", re.IGNORECASE)
REPEAT_FOLDER = re.compile(r"(\d+)_")  # kohya `10_name`: 10 repeats (the trainer's rule)
MAX_LISTED = 5000  # thumbnails held in memory: up to 36 KB each
BATCH_SECONDS, BATCH_IMAGES = 0.05, 500  # what the window converts in one go stays small


def _images_in(folder: str) -> tuple[list[str], list[str]]:
    """(image files, subfolders) directly in `folder`, by name; unreadable folders are empty."""
    images, folders = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    folders.append(entry.path)
                elif IMAGE_NAME.search(entry.name):
                    images.append(entry.path)
    except OSError:
        pass
    return sorted(images), sorted(folders)


def folder_repeats(name: str) -> int | None:
    """N of a kohya repeat folder name `N_name` (N >= 1), else None."""
    match = REPEAT_FOLDER.match(name)
    return int(match.group(1)) if match and int(match.group(1)) >= 1 else None


@dataclass(frozen=True)
class FolderCount:
    """The images a dataset folder trains on: those directly in it, and (repeats, images) of
    each kohya `N_name` subfolder (other subfolders are not trained on)."""

    direct: int
    repeat_folders: tuple[tuple[int, int], ...] = ()

    @property
    def images(self) -> int:
        return self.direct + sum(count for _, count in self.repeat_folders)

    def seen_per_epoch(self, repeats: int) -> int:
        """Images seen per epoch, the direct ones `repeats` times each."""
        return self.direct * repeats + sum(n * count for n, count in self.repeat_folders)


def dataset_images(folders: list[Path]) -> tuple[list[Path], int, dict[Path, FolderCount]]:
    """(the first MAX_LISTED images, how many there are, each folder's count) in the folders
    and their direct subfolders, sorted by name."""
    found: list[str] = []
    counts: dict[Path, FolderCount] = {}
    for folder in folders:
        images, subfolders = _images_in(str(folder))
        found += images
        repeat_folders = []
        for subfolder in subfolders:
            inside = _images_in(subfolder)[0]
            found += inside
            repeats = folder_repeats(os.path.basename(subfolder))
            if repeats and not os.path.islink(subfolder):  # training does not follow links
                repeat_folders.append((repeats, len(inside)))
        counts[folder] = FolderCount(len(images), tuple(repeat_folders))
    return [Path(p) for p in found[:MAX_LISTED]], len(found), counts


def _thumbnail(path: Path) -> QImage:
    """The image scaled down to fit SIZE (never up: small images stay small); null if unreadable."""
    reader = QImageReader(str(path))
    size = reader.size()
    if size.isValid() and (size.width() > SIZE or size.height() > SIZE):
        reader.setScaledSize(size.scaled(SIZE, SIZE, Qt.KeepAspectRatio))
    return reader.read()


class _Signals(QObject):
    listed = Signal(int, list, int, object)  # generation, paths, how many in all, FolderCounts
    loaded = Signal(int, int, list)     # generation, first index, thumbnails (null: unreadable)
    done = Signal(int)


class _Loader(QRunnable):
    def __init__(self, generation: int, folders: list[Path], owner: ThumbnailGrid) -> None:
        super().__init__()
        self.generation, self.folders, self.owner = generation, folders, owner
        self.signals = owner.signals

    def run(self) -> None:
        paths, total, counts = dataset_images(self.folders)
        self.signals.listed.emit(self.generation, paths, total, counts)
        batch: list[QImage] = []
        first, started = 0, time.monotonic()
        for index, path in enumerate(paths):
            if self.owner.generation != self.generation:
                return  # a newer listing replaced this one
            batch.append(_thumbnail(path))
            if (time.monotonic() - started > BATCH_SECONDS or len(batch) == BATCH_IMAGES
                    or index == len(paths) - 1):
                self.signals.loaded.emit(self.generation, first, batch)
                batch, first, started = [], index + 1, time.monotonic()
        self.signals.done.emit(self.generation)


class ThumbnailModel(QAbstractListModel):
    """Image names with their thumbnails (a placeholder until decoded)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[Path] = []
        self.icons: dict[int, QIcon] = {}
        self.unreadable: set[int] = set()
        self._blank, self._blank_colour = QIcon(), None

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt's name
        return 0 if parent.isValid() else len(self.paths)

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        row = index.row()
        if not index.isValid() or row >= len(self.paths):
            return None
        if role == Qt.DisplayRole:
            return self.paths[row].name
        if role == Qt.DecorationRole:
            return self.icons.get(row) or self._placeholder()
        if role == Qt.ToolTipRole:
            return str(self.paths[row]) + ("\nThis file can't be read as an image."
                                           if row in self.unreadable else "")
        if role == Qt.ForegroundRole and row in self.unreadable:
            return tone_colour(ERROR)
        if role == Qt.UserRole:
            return str(self.paths[row])
        return None

    def _placeholder(self) -> QIcon:
        """A blank tile in the palette's colours (made again when the palette changes)."""
        colour = QApplication.palette().color(QPalette.AlternateBase)
        if self._blank_colour != colour:
            pixmap = QPixmap(SIZE, SIZE)
            pixmap.fill(colour)
            self._blank, self._blank_colour = QIcon(pixmap), colour
        return self._blank

    def show(self, paths: list[Path]) -> None:
        self.beginResetModel()
        self.paths, self.icons, self.unreadable = list(paths), {}, set()
        self.endResetModel()

    def add_thumbnails(self, first: int, images: list[QImage]) -> None:
        for row, image in enumerate(images, first):
            if image.isNull():
                self.unreadable.add(row)
            else:
                self.icons[row] = QIcon(QPixmap.fromImage(image))
        self.dataChanged.emit(self.index(first), self.index(first + len(images) - 1))

    def row_of(self, name: str) -> int:
        return next(row for row, path in enumerate(self.paths) if path.name == name)


class ThumbnailGrid(QWidget):
    listed = Signal(int)  # how many images the grid shows
    counted = Signal(object)  # {folder: FolderCount} for every dataset folder (Path keys)
    loaded_all = Signal()

    def __init__(self, binder: Binder) -> None:
        super().__init__()
        self.binder = binder
        self.generation = 0
        self.loaded = 0
        self.total = 0
        self.signals = _Signals()
        self.signals.listed.connect(self._listed)
        self.signals.loaded.connect(self._thumbnails)
        self.signals.done.connect(self._done)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)  # one listing at a time; older ones end at once
        self.model = ThumbnailModel()
        self.grid = QListView()
        self.grid.setModel(self.model)
        self.grid.setViewMode(QListView.IconMode)
        self.grid.setIconSize(QSize(SIZE, SIZE))
        self.grid.setGridSize(QSize(SIZE + 16, SIZE + 22))
        self.grid.setResizeMode(QListView.Adjust)
        self.grid.setMovement(QListView.Static)
        self.grid.setUniformItemSizes(True)
        self.grid.setLayoutMode(QListView.Batched)  # lays out a big list in slices
        self.grid.setMinimumHeight(180)
        self.grid.selectionModel().currentChanged.connect(self._select)
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
        binder.changed.connect(self._config_changed)

    @property
    def paths(self) -> list[Path]:
        return self.model.paths

    def _config_changed(self, key: str) -> None:
        if key in ("*", "dataset.folders"):
            self.refresh()

    def refresh(self) -> None:
        """List the images again and load their thumbnails, both in the background."""
        self.generation += 1
        self.loaded = 0
        self.model.show([])
        folders = [f.path for f in self.binder.config.dataset.folders]
        self.count.setText("Listing images..." if folders else "No images yet.")
        if folders:
            self.pool.start(_Loader(self.generation, folders, self))

    def _listed(self, generation: int, paths: list[Path], total: int,
                counts: dict[Path, FolderCount]) -> None:
        if generation != self.generation:
            return
        self.total = total
        self.counted.emit(counts)
        self.model.show(paths)
        self.count.setText(self._count_text(" - loading thumbnails...") if paths
                           else "No images yet.")
        self.listed.emit(len(paths))

    def _count_text(self, more: str = "") -> str:
        shown = len(self.paths)
        if shown < self.total:
            return f"{self.total:,} images (the first {shown:,} are shown){more}"
        return f"{shown:,} images{more}"

    def _thumbnails(self, generation: int, first: int, images: list[QImage]) -> None:
        if generation == self.generation:
            self.model.add_thumbnails(first, images)
            self.loaded += len(images)

    def _done(self, generation: int) -> None:
        if generation == self.generation:
            self.count.setText(self._count_text())
            self.loaded_all.emit()

    # -- captions --------------------------------------------------------------------------
    def caption_path(self, image: Path) -> Path:
        return image.with_suffix(self.binder.config.dataset.caption_extension)

    def _select(self, current: QModelIndex, _previous=None) -> None:
        if not current.isValid():
            self.caption.clear()
            self.save_button.setEnabled(False)
            return
        path = self.caption_path(Path(current.data(Qt.UserRole)))
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        self.caption.setPlainText(text.strip())
        self.caption_file.setText(f"{path.name}" + ("" if path.exists() else " (new file)"))
        self.save_button.setEnabled(True)

    def select(self, name: str) -> None:
        self.grid.setCurrentIndex(self.model.index(self.model.row_of(name)))

    def save_caption(self) -> Path | None:
        current = self.grid.currentIndex()
        if not current.isValid():
            return None
        path = self.caption_path(Path(current.data(Qt.UserRole)))
        atomic_write_text(path, self.caption.toPlainText().strip() + "\n")
        self.caption_file.setText(f"{path.name} saved")
        return path

    def stop(self) -> None:
        self.generation += 1
        self.pool.waitForDone(2000)
