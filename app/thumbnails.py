"""The dataset's images as a thumbnail grid, listed and decoded in a worker thread, with each
image's caption editable and saved to its caption file.

The grid is a QListView over a list model, so showing 5,000 names costs the window one model
reset, not 5,000 items. Listing the folders and decoding (QImageReader, safe off the GUI thread)
run on a QThreadPool thread; results come back through queued signals in batches of at most
~50 ms of work, so a 10,000-image folder never freezes the window. A newer listing makes older
loads stop early (a generation number): listing a cold 10,000-image folder took 220 ms, too
long for the GUI thread. How many of the images train, and how often, is not counted here: the
folder table and the step calculator show the health report's scan (the trainer's own count).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from PySide6.QtCore import (QAbstractListModel, QEvent, QModelIndex, QObject, QRunnable, QSize,
                            Qt, QThreadPool, QTimer, Signal)
from PySide6.QtGui import QIcon, QImage, QImageReader, QKeySequence, QPalette, QPixmap, QShortcut
from PySide6.QtWidgets import (QApplication, QHBoxLayout, QLabel, QListView, QPlainTextEdit,
                               QPushButton, QVBoxLayout, QWidget)

from app.binding import Binder
from app.colours import ERROR, set_tone, tone_colour
from app.mask_overlay import MaskFinder, masked_thumbnail
from trainer.atomic import atomic_write_text
from trainer.config import DatasetConfig
from trainer.paths import is_folder

SIZE = 96
IMAGE_NAME = re.compile(r"\.(png|jpe?g|webp|bmp)\Z", re.IGNORECASE)
MAX_LISTED = 5000  # thumbnails held in memory: up to 36 KB each
BATCH_SECONDS, BATCH_IMAGES = 0.05, 500  # what the window converts in one go stays small


def _images_in(folder: str) -> tuple[list[str], list[str]]:
    """(image files, subfolders) directly in `folder`, by name; unreadable folders are empty."""
    images, folders = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_folder(entry):
                    folders.append(entry.path)
                elif IMAGE_NAME.search(entry.name):
                    images.append(entry.path)
    except OSError:
        pass
    return sorted(images), sorted(folders)


def dataset_images(folders: list[Path], masks: frozenset[Path] = frozenset()
                   ) -> tuple[list[Path], int]:
    """(the first MAX_LISTED images, how many there are) in the folders and their direct
    subfolders - not a mask folder kept among them - sorted by name. Which of them train, and
    how often, is the health report's scan to say (the trainer's own rules)."""
    found: list[str] = []
    for folder in folders:
        images, subfolders = _images_in(str(folder))
        found += images
        for subfolder in subfolders:
            if Path(subfolder) not in masks:
                found += _images_in(subfolder)[0]
    return [Path(p) for p in found[:MAX_LISTED]], len(found)


def _thumbnail(path: Path) -> QImage:
    """The image scaled down to fit SIZE (never up: small images stay small); null if unreadable."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)  # upright, as the trainer reads it (EXIF orientation)
    size = reader.size()
    if size.isValid() and (size.width() > SIZE or size.height() > SIZE):
        reader.setScaledSize(size.scaled(SIZE, SIZE, Qt.KeepAspectRatio))
    return reader.read()


class _Signals(QObject):
    listed = Signal(int, list, int)  # generation, paths, how many in all
    loaded = Signal(int, int, list)     # generation, first index, thumbnails (null: unreadable)
    done = Signal(int)


class _Loader(QRunnable):
    def __init__(self, generation: int, dataset: DatasetConfig, owner: ThumbnailGrid) -> None:
        super().__init__()
        self.generation, self.dataset, self.owner = generation, dataset, owner
        self.signals = owner.signals

    def run(self) -> None:
        paths, total = dataset_images(
            [f.path for f in self.dataset.folders],
            frozenset(Path(f.mask_folder) for f in self.dataset.folders if f.mask_folder))
        self.signals.listed.emit(self.generation, paths, total)
        masks = MaskFinder(self.dataset.folders, self.dataset.masked_loss)
        batch: list[QImage] = []
        first, started = 0, time.monotonic()
        for index, path in enumerate(paths):
            if self.owner.generation != self.generation:
                return  # a newer listing replaced this one
            thumbnail = _thumbnail(path)
            if masks.masked_loss:  # what the loss ignores is shaded
                thumbnail = masked_thumbnail(thumbnail, masks.mask_of(path),
                                             self.dataset.background_color)
            batch.append(thumbnail)
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
        self.skipped: dict[str, str] = {}  # path -> why training leaves it out (the scan's)
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
        skipped = self.skipped.get(str(self.paths[row]))
        if role == Qt.ToolTipRole:
            return str(self.paths[row]) + (f"\nNot trained on: {skipped}" if skipped else
                                           "\nThis file can't be read as an image."
                                           if row in self.unreadable else "")
        if role == Qt.ForegroundRole and (row in self.unreadable or skipped):
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

    def mark_skipped(self, skipped: dict[str, str]) -> None:
        self.skipped = dict(skipped)
        if self.paths:
            self.dataChanged.emit(self.index(0), self.index(len(self.paths) - 1))

    def row_of(self, name: str) -> int:
        return next(row for row, path in enumerate(self.paths) if path.name == name)


class ThumbnailGrid(QWidget):
    listed = Signal(int)  # how many images the grid shows
    loaded_all = Signal()
    caption_saved = Signal(object)  # the caption file's Path

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
        self.save_button.setToolTip("Write this caption to the image's caption file (Ctrl+S). "
                                    "It is also saved when you pick another image.")
        self.save_button.clicked.connect(self.save_caption)
        self.save_button.setEnabled(False)
        self._shown_caption: tuple[Path, str] | None = None  # (caption file, text as read)
        self.locked = False  # a caption tool is writing (lock_captions)
        self.caption.installEventFilter(self)
        self.save_shortcut = QShortcut(QKeySequence.Save, self)  # Ctrl+S while in the grid
        self.save_shortcut.setContext(Qt.WidgetWithChildrenShortcut)
        self.save_shortcut.activated.connect(self.save_caption)
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
        # The config the window starts with (a restored session) is listed like any other:
        # once the event loop runs, so the window shows first.
        QTimer.singleShot(0, self, self.refresh)

    @property
    def paths(self) -> list[Path]:
        return self.model.paths

    def _config_changed(self, key: str) -> None:
        if key in ("*", "dataset.folders", "dataset.masked_loss", "dataset.background_color"):
            self.refresh()

    def refresh(self) -> None:
        """List the images again and load their thumbnails, both in the background."""
        self.save_if_edited()
        self._shown_caption = None
        self.caption.clear()
        self.save_button.setEnabled(False)
        self.generation += 1
        self.loaded = 0
        self.model.show([])
        dataset = self.binder.config.dataset
        self.count.setText("Listing images..." if dataset.folders else "No images yet.")
        if dataset.folders:
            self.pool.start(_Loader(self.generation, dataset, self))

    def _listed(self, generation: int, paths: list[Path], total: int) -> None:
        if generation != self.generation:
            return
        self.total = total
        self.model.show(paths)
        self.count.setText(self._count_text(" - loading thumbnails...") if paths
                           else "No images yet.")
        self.listed.emit(len(paths))

    def mark_skipped(self, skipped: dict[str, str]) -> None:
        """The files the health report's scan leaves out: shown in the error colour with the
        reason, their captions not editable, and counted in the grid's line."""
        self.model.mark_skipped(skipped)
        if self.paths and self.loaded >= len(self.paths):
            self.count.setText(self._count_text())
        current = self.grid.currentIndex()
        if current.isValid():
            self._select(current)

    def _count_text(self, more: str = "") -> str:
        shown = len(self.paths)
        left_out = len(self.model.skipped)
        text = (f"{self.total:,} images (the first {shown:,} are shown)" if shown < self.total
                else f"{shown:,} images")
        if left_out:
            text += f", {left_out:,} not trained on (see the Health report)"
        if self.binder.config.dataset.masked_loss:
            text += "; the shaded parts are left out of the loss (masked loss)"
        return text + more

    def _thumbnails(self, generation: int, first: int, images: list[QImage]) -> None:
        if generation == self.generation:
            self.model.add_thumbnails(first, images)
            self.loaded += len(images)

    def _done(self, generation: int) -> None:
        if generation == self.generation:
            self.count.setText(self._count_text())
            self.loaded_all.emit()

    # -- captions --------------------------------------------------------------------------
    # An edited caption is saved when the user moves on (another thumbnail, focus leaving the
    # box, a new listing, the window closing) or presses Ctrl+S: clicking away never loses it.
    def caption_path(self, image: Path) -> Path:
        return image.with_suffix(self.binder.config.dataset.caption_extension)

    @property
    def caption_edited(self) -> bool:
        return (self._shown_caption is not None
                and self.caption.toPlainText().strip() != self._shown_caption[1])

    def _select(self, current: QModelIndex, _previous=None) -> None:
        self.save_if_edited()
        if not current.isValid():
            self._shown_caption = None
            self.caption.clear()
            self.save_button.setEnabled(False)
            return
        image = Path(current.data(Qt.UserRole))
        skipped = self.model.skipped.get(str(image))
        if skipped:  # its caption would never be read: don't invite a new caption file
            self._shown_caption = None
            self.caption.clear()
            self.caption.setReadOnly(True)
            self.save_button.setEnabled(False)
            self._say(f"{image.name} is not trained on: {skipped}", error=True)
            return
        path = self.caption_path(image)
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        self._shown_caption = (path, text)
        self.caption.setReadOnly(self.locked)
        self.caption.setPlainText(text)
        self._say(f"{path.name}" + ("" if path.exists() else " (new file)") + (
            " - read only while a caption tool writes" if self.locked else ""))
        self.save_button.setEnabled(not self.locked)

    def lock_captions(self, locked: bool) -> None:
        """While a caption tool writes the folder's captions the box is read only: text typed
        there would be saved over the tool's write, or the tool's over it."""
        self.save_if_edited()
        self.locked = locked
        current = self.grid.currentIndex()
        if current.isValid():
            self._select(current)

    def reload_caption(self) -> None:
        """Show the current image's caption as it is on disk now: a caption tool rewrote
        it, and the box's old text must not be saved over it."""
        self._shown_caption = None
        current = self.grid.currentIndex()
        if current.isValid():
            self._select(current)

    def select(self, name: str) -> None:
        self.grid.setCurrentIndex(self.model.index(self.model.row_of(name)))

    def save_if_edited(self) -> Path | None:
        return self.save_caption() if self.caption_edited else None

    def save_caption(self) -> Path | None:
        """Write the caption box to the shown image's caption file (its permissions kept)."""
        if self._shown_caption is None or self.locked:
            return None
        path, _ = self._shown_caption
        text = self.caption.toPlainText().strip()
        try:
            atomic_write_text(path, text + "\n")
        except OSError as error:  # a read-only folder: say so, keep the text in the box
            self._say(f"{path.name} can't be saved: {error.strerror or error}", error=True)
            return None
        self._shown_caption = (path, text)
        self._say(f"{path.name} saved")
        self.caption_saved.emit(path)
        return path

    def _say(self, text: str, error: bool = False) -> None:
        self.caption_file.setText(text)
        set_tone(self.caption_file, ERROR if error else None)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if watched is self.caption and event.type() == QEvent.FocusOut:
            self.save_if_edited()
        return super().eventFilter(watched, event)

    def stop(self) -> None:
        self.save_if_edited()
        self.generation += 1
        self.pool.waitForDone(2000)
