"""The queue beside the Run page's monitor: the runs waiting their turn, and the runs that
ended while the window was open.

Each waiting run shows its name, base model and length, and can be moved, removed or taken
back into the settings to edit before it starts. The waiting list is saved (atomically) as it
changes, so it survives a restart of the window; a finished run keeps its run folder and LoRA
file one click away after the next run starts.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QGridLayout, QLabel, QListWidget, QListWidgetItem, QPushButton,
                               QVBoxLayout, QWidget)

from app.session import config_dir
from trainer.atomic import atomic_write_text
from trainer.job_spec import JobSpec


def queue_file() -> Path:
    return config_dir() / "queue.json"


def describe(spec: JobSpec) -> str:
    """'name · model · 800 steps' for a waiting run."""
    config = spec.config
    model = Path(config["model"]["path"]).name if config["model"]["path"] else "no model"
    schedule = config["schedule"]
    length = (f"{schedule['max_train_epochs']} epochs" if schedule["max_train_epochs"]
              else f"{schedule['max_train_steps']} steps")
    resumed = " (resume)" if spec.resume else ""
    return f"{config['output']['name']} · {model} · {length}{resumed}"


def load_queue(path: Path | None = None) -> list[JobSpec]:
    """The waiting runs saved last time; a missing or unreadable file is an empty queue."""
    path = path or queue_file()
    try:
        return [JobSpec(**entry) for entry in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return []


class QueuePanel(QWidget):
    changed = Signal()               # the waiting list changed (count, order)
    edit_requested = Signal(object)  # a JobSpec taken out of the queue to edit
    open_requested = Signal(str)     # a finished run's folder to show

    def __init__(self, remember: bool = False) -> None:
        super().__init__()
        self.remember = remember  # save the waiting list (the real window; not tests' windows)
        self.specs: list[JobSpec] = load_queue() if remember else []
        self.open_url: Callable[[QUrl], object] = QDesktopServices.openUrl
        self.title = QLabel()
        self.waiting = QListWidget()
        self.waiting.setToolTip("Runs that start one after another when the current run ends.")
        self.waiting.currentRowChanged.connect(lambda *_: self.refresh())
        buttons = QGridLayout()
        self.up, self.down = QPushButton("Move up"), QPushButton("Move down")
        self.remove, self.edit = QPushButton("Remove"), QPushButton("Edit")
        self.edit.setToolTip("Take this run out of the queue and show its settings, to change "
                             "them and add it again.")
        for index, (button, slot) in enumerate(((self.up, lambda: self.move(-1)),
                                                (self.down, lambda: self.move(1)),
                                                (self.remove, self.remove_current),
                                                (self.edit, self.edit_current))):
            button.clicked.connect(slot)
            buttons.addWidget(button, index // 2, index % 2)
        self.finished = QListWidget()
        self.finished.setToolTip("Runs that ended since the window opened; double-click to "
                                 "show one again.")
        self.finished.itemDoubleClicked.connect(self._open_item)
        for names in (self.waiting, self.finished):  # long names: "…" at the end, not a scroll
            names.setTextElideMode(Qt.ElideRight)
            names.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.show_folder = QPushButton("Show in folder")
        self.show_folder.clicked.connect(self._show_folder)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.waiting, 1)
        layout.addLayout(buttons)
        layout.addWidget(QLabel("Ended"))
        layout.addWidget(self.finished, 1)
        layout.addWidget(self.show_folder)
        self.setMinimumWidth(240)
        self._fill(0)  # a queue restored from the last session is listed at once
        self.refresh()

    # -- the waiting runs ------------------------------------------------------------------
    def add(self, spec: JobSpec) -> None:
        self.specs.append(spec)
        self._changed(len(self.specs) - 1)

    def take_next(self) -> JobSpec | None:
        if not self.specs:
            return None
        spec = self.specs.pop(0)
        self._changed(0)
        return spec

    def move(self, offset: int) -> None:
        row = self.waiting.currentRow()
        target = row + offset
        if row < 0 or not 0 <= target < len(self.specs):
            return
        self.specs.insert(target, self.specs.pop(row))
        self._changed(target)

    def remove_current(self) -> JobSpec | None:
        row = self.waiting.currentRow()
        if row < 0:
            return None
        spec = self.specs.pop(row)
        self._changed(min(row, len(self.specs) - 1))
        return spec

    def edit_current(self) -> None:
        spec = self.remove_current()
        if spec is not None:
            self.edit_requested.emit(spec)

    def _fill(self, select: int) -> None:
        self.waiting.clear()
        for spec in self.specs:
            item = QListWidgetItem(describe(spec))
            item.setToolTip(f"{describe(spec)}\nruns in {spec.run_dir}")
            self.waiting.addItem(item)
        if self.specs:
            self.waiting.setCurrentRow(max(0, select))

    def _changed(self, select: int) -> None:
        self._fill(select)
        if self.remember:
            try:
                atomic_write_text(queue_file(), json.dumps([asdict(s) for s in self.specs]))
            except OSError:
                pass  # remembering the queue is a convenience; the runs themselves are unharmed
        self.refresh()
        self.changed.emit()

    # -- the runs that ended ---------------------------------------------------------------
    def add_finished(self, name: str, run_dir: str, outcome: str, lora_file: str = "") -> None:
        item = QListWidgetItem(f"{name}: {outcome}")  # the LoRA file is in the tooltip
        item.setData(Qt.UserRole, run_dir)
        item.setToolTip(f"run folder: {run_dir}" + (f"\nLoRA file: {lora_file}"
                                                     if lora_file else ""))
        self.finished.insertItem(0, item)  # newest first
        self.finished.setCurrentRow(0)
        self.refresh()

    def _open_item(self, item: QListWidgetItem) -> None:
        self.open_requested.emit(item.data(Qt.UserRole))

    def _show_folder(self) -> None:
        item = self.finished.currentItem()
        if item is not None:
            self.open_url(QUrl.fromLocalFile(item.data(Qt.UserRole)))

    def refresh(self) -> None:
        count = len(self.specs)
        self.title.setText(f"Waiting: {count} run(s)" if count else "Waiting: none")
        row = self.waiting.currentRow()
        self.up.setEnabled(row > 0)
        self.down.setEnabled(0 <= row < count - 1)
        self.remove.setEnabled(row >= 0)
        self.edit.setEnabled(row >= 0)
        self.show_folder.setEnabled(self.finished.currentItem() is not None)
        self.setVisible(bool(count or self.finished.count()))
