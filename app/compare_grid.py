"""Compare checkpoints in the Export section: the run's checkpoints x preview prompts x LoRA
strengths on one labelled sheet, rendered by the trainer in a child process (`lora-train grid
--json`: one line per picture, then the result), so the window never waits for it.

Pictures are cached by the trainer (trainer.grid), so reopening a grid costs nothing. The sheet
is shown with a zoom; Save writes it as one PNG with the settings on it; Export this checkpoint
hands the picked checkpoint to the exporter above.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                               QListWidgetItem, QPlainTextEdit, QProgressBar, QPushButton,
                               QScrollArea, QVBoxLayout, QWidget)

from app.binding import Binder
from app.colours import ERROR, set_tone
from app.exporter import Exporter, checkpoints_of, validation_loss_of
from app.forms import plain_label
from app.trainer_process import JsonLinesChild

ZOOMS = (("fit", 0.0), ("50%", 0.5), ("100%", 1.0), ("200%", 2.0), ("400%", 4.0))
SHOWN_CHECKPOINTS = 4  # ticked at first: the newest few


def parse_strengths(text: str) -> list[float]:
    """'0, 0.5, 0.8 1' -> [0.0, 0.5, 0.8, 1.0]; a word that is no number raises ValueError
    naming it."""
    values = []
    for word in text.replace(",", " ").split():
        try:
            values.append(float(word))
        except ValueError:
            raise ValueError(f"{word!r} is not a strength; use numbers like 0, 0.5, 1") from None
    if not values:
        raise ValueError("give at least one strength, like 0, 0.5, 1")
    return values


class CompareGrid(QWidget):
    finished = Signal(object)  # the result line of `grid --json`, or None when it failed

    def __init__(self, binder: Binder, exporter: Exporter) -> None:
        super().__init__()
        self.binder, self.exporter = binder, exporter
        self.child = JsonLinesChild(self, self.handle_message, self._done)
        self.result: dict | None = None
        self.checkpoints = QListWidget()
        self.checkpoints.setMaximumHeight(120)
        self.prompts = QPlainTextEdit()
        self.prompts.setPlaceholderText("one prompt per line; empty: the Samples section's")
        self.prompts.setMaximumHeight(70)
        self.strengths = QLineEdit("0, 0.5, 0.8, 1")
        self.render_button = QPushButton("Render grid")
        self.render_button.clicked.connect(self.render)
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(self.stop)
        self.save = QPushButton("Save grid as PNG...")
        self.save.clicked.connect(self._ask_save)
        self.use = QPushButton("Export this checkpoint")
        self.use.setToolTip("Pick the checkpoint selected in the list for the export above.")
        self.use.clicked.connect(self.use_selected)
        self.add = QPushButton("Add another run...")
        self.add.setToolTip("Compare with the checkpoints of another run of the same base model.")
        self.add.clicked.connect(self._ask_run)
        self.zoom = QComboBox()
        for label, factor in ZOOMS:
            self.zoom.addItem(label, factor)
        self.zoom.currentIndexChanged.connect(lambda _: self._show_sheet())
        self.progress = QProgressBar()
        self.status = plain_label("Pick checkpoints, then Render grid.")
        self.sheet = QLabel()
        self.sheet.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        self.view = QScrollArea()
        self.view.setWidget(self.sheet)
        self.view.setMinimumHeight(240)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for label, widget in (("Checkpoints", self.checkpoints), ("Prompts", self.prompts),
                              ("Strengths", self.strengths)):
            layout.addWidget(plain_label(label))
            layout.addWidget(widget)
            if widget is self.checkpoints:
                layout.addWidget(self.add, 0, Qt.AlignLeft)
        buttons = QHBoxLayout()
        for widget in (self.render_button, self.cancel, self.progress, self.zoom, self.save,
                       self.use):
            buttons.addWidget(widget)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.view, 1)
        exporter.run_changed.connect(self.set_run_dir)
        self._enable()

    def set_run_dir(self, run_dir: Path | None) -> None:
        self.checkpoints.clear()
        if run_dir:
            self.add_run(Path(run_dir))
        self._enable()

    def add_run(self, run_dir: Path) -> int:
        """List a run's checkpoints (another run's after the first: the grid compares runs
        of one base; the trainer refuses others, saying so); how many were added."""
        listed = {self.checkpoints.item(i).data(Qt.UserRole)
                  for i in range(self.checkpoints.count())}
        folders = [f for f in checkpoints_of(run_dir) if str(f) not in listed]  # newest first
        for index, folder in enumerate(folders):
            score = validation_loss_of(folder)
            item = QListWidgetItem(f"{folder.parent.parent.name} step "
                                   f"{int(folder.name.split('-')[1])}" +
                                   (f" · validation {score:.4f}" if score is not None else ""))
            item.setData(Qt.UserRole, str(folder))
            item.setCheckState(Qt.Checked if index < SHOWN_CHECKPOINTS else Qt.Unchecked)
            self.checkpoints.addItem(item)
        self._enable()
        return len(folders)

    def _ask_run(self) -> None:
        from app.file_dialogs import pick_folder

        path = pick_folder(self, "Another run of the same base model", "runs")
        if path and not self.add_run(Path(path)):
            self._say(f"{path} has no checkpoints to compare", problem=True)

    def chosen(self) -> list[str]:
        """The ticked checkpoints in the grid's row order: run by run, oldest first."""
        items = [self.checkpoints.item(i) for i in range(self.checkpoints.count())]
        ticked = [item.data(Qt.UserRole) for item in items if item.checkState() == Qt.Checked]
        return sorted(ticked, key=lambda folder: (str(Path(folder).parent), Path(folder).name))

    def arguments(self, out: Path) -> list[str]:
        """`lora-train grid` for the current choices (ValueError: a bad strength)."""
        sampling = self.binder.config.sampling
        lines = [line for line in self.prompts.toPlainText().splitlines() if line.strip()] or \
            [line for line in sampling.prompts if line.strip()]
        if not lines:
            raise ValueError("write a prompt (or add preview prompts in the Samples section)")
        args = ["grid", *self.chosen()]
        for line in lines:
            args += ["--prompt", line]
        return args + ["--strength", *map(str, parse_strengths(self.strengths.text())),
                       "--sampler", sampling.sampler, "--steps", str(sampling.steps),
                       "--guidance", f"{sampling.guidance_scale:g}", "--seed", str(sampling.seed),
                       "--out", str(out), "--json"]

    def render(self) -> bool:
        if self.child.running or not self.chosen():
            return False
        run_dir = Path(self.chosen()[0]).parent.parent
        try:
            args = self.arguments(run_dir / "grid.png")
        except ValueError as error:
            self._say(str(error), problem=True)
            return False
        self.result = None
        self.child.start(args)
        self._say("Rendering in the background...")
        self._enable()
        return True

    def handle_message(self, message: dict) -> None:
        """One line of `grid --json`: a picture done, or the finished sheet."""
        if "total" in message:
            self.progress.setRange(0, message["total"])
            self.progress.setValue(message["done"])
            self._say(f"picture {message['done']} of {message['total']}"
                      + (" (from the cache)" if message.get("cached") else ""))
        elif "grid" in message:
            self.result = message
            self._say(f"{message['rendered']} rendered, {message['cached']} from the cache: "
                      f"{message['grid']}")
            self._show_sheet()

    def _done(self, code: int, error: str) -> None:
        if self.result is None:
            self._say(error or f"the grid stopped ({code})", problem=True)
        self._enable()
        self.finished.emit(self.result)

    def _show_sheet(self) -> None:
        if not self.result:
            return
        pixmap = QPixmap(self.result["grid"])
        factor = self.zoom.currentData()
        if not factor:  # fit the view's width
            factor = min(1.0, max(0.1, self.view.viewport().width() / max(1, pixmap.width())))
        self.sheet.setPixmap(pixmap.scaled(int(pixmap.width() * factor),
                                           int(pixmap.height() * factor),
                                           Qt.KeepAspectRatio, Qt.SmoothTransformation))
        self.sheet.adjustSize()

    def save_to(self, path: Path) -> Path:
        shutil.copyfile(self.result["grid"], path)
        self._say(f"grid saved to {path}")
        return Path(path)

    def _ask_save(self) -> None:
        from app.file_dialogs import pick_save_file

        if self.result:
            path = pick_save_file(self, "Save the grid", "grid", "PNG image (*.png)",
                                  fallback=str(Path(self.result["grid"]).parent))
            if path:
                self.save_to(Path(path))

    def use_selected(self) -> bool:
        """Pick the list's selected checkpoint in the exporter (the user then presses Export)."""
        item = self.checkpoints.currentItem()
        if item is None:
            return False
        index = self.exporter.checkpoint.findData(item.data(Qt.UserRole))
        if index >= 0:
            self.exporter.checkpoint.setCurrentIndex(index)
            self._say(f"{item.text().split(' · ')[0]} is picked for the export above")
        return index >= 0

    def stop(self) -> None:
        if self.child.running:
            self.child.kill()
            self._say("Cancelled; the pictures already made stay cached.")
            self._enable()

    def _say(self, text: str, problem: bool = False) -> None:
        self.status.setText(text)
        set_tone(self.status, ERROR if problem else None)

    def _enable(self) -> None:
        running = self.child.running
        self.render_button.setEnabled(not running and self.checkpoints.count() > 0)
        self.cancel.setEnabled(running)
        self.save.setEnabled(self.result is not None and not running)
        self.use.setEnabled(self.checkpoints.count() > 0)
