"""The Dataset section's Caption tools tab: bulk edits of one folder's captions, captions from
a model on this computer (app/caption_model.py), the last change undone, and the folder's
tag-frequency table - the numbers the exported file's ss_tag_frequency will hold.

Everything runs in the trainer's command line in a child (`lora-train captions` / `caption`
with --json), so the window never imports the dataset code or a model, and never waits. Each
change goes through the folder's undo journal; Undo restores the last one exactly. The
thumbnail grid's unsaved caption is saved before a tool runs and re-read after it.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout,
                               QHeaderView, QLineEdit, QPushButton, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from app.binding import Binder
from app.colours import ERROR, set_tone
from app.forms import plain_label
from app.thumbnails import ThumbnailGrid
from app.trainer_process import JsonLinesChild


def tags_of(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def read_only_table(headers: list[str]) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.setEditTriggers(QTableWidget.NoEditTriggers)
    table.verticalHeader().hide()
    table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
    return table


class CaptionTools(QWidget):
    changed = Signal()  # caption files were written or restored

    def __init__(self, binder: Binder, thumbnails: ThumbnailGrid) -> None:
        super().__init__()
        from app.caption_model import CaptionModelPanel

        self.binder, self.thumbnails = binder, thumbnails
        self.child = JsonLinesChild(self, self._line, self._ended)
        self._writes = False  # the running tool may change files (not a preview)
        self._counts_stale = True  # the tag table waits until the tab is shown
        self.counter = JsonLinesChild(self, self._counted, self._count_ended)
        self.folder = QComboBox()
        self.folder.setToolTip("The dataset folder whose captions the tools change.")
        self.folder.currentIndexChanged.connect(self._folder_changed)
        self.find, self.replace = QLineEdit(), QLineEdit()
        self.regex = QCheckBox("regular expression")
        self.add_tags, self.remove_tags, self.first = QLineEdit(), QLineEdit(), QLineEdit()
        for edit, tip in ((self.add_tags, "tags every caption gets, at the end (a, b)"),
                          (self.remove_tags, "tags taken out of every caption (a, b); "
                                             "double-click a tag in the table to add it here"),
                          (self.first, "the trigger word: moved first, added where missing")):
            edit.setPlaceholderText(tip)
        self.preview_button, self.apply = QPushButton("Preview"), QPushButton("Apply")
        self.preview_button.clicked.connect(lambda: self.run_edit(dry_run=True))
        self.apply.clicked.connect(lambda: self.run_edit(dry_run=False))
        edits = QGroupBox("Edit every caption")
        form = QFormLayout(edits)
        find_row = QHBoxLayout()
        for widget in (self.find, plain_label("with", False), self.replace, self.regex):
            find_row.addWidget(widget)
        form.addRow("Find", find_row)
        form.addRow("Add tags", self.add_tags)
        form.addRow("Remove tags", self.remove_tags)
        form.addRow("Trigger word first", self.first)
        buttons = QHBoxLayout()
        buttons.addWidget(self.preview_button)
        buttons.addWidget(self.apply)
        buttons.addStretch()
        form.addRow(buttons)
        self.model_panel = CaptionModelPanel(self)
        self.undo_button = QPushButton("Undo last change")
        self.undo_button.setToolTip("Put back the captions as they were before the last edit "
                                    "or captioning run in this folder.")
        self.undo_button.clicked.connect(self.undo)
        self.status = plain_label("")
        self.changes = read_only_table(["Image", "Before", "After"])
        self.changes.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.frequency = read_only_table(["Folder", "Tag", "Images"])
        self.frequency.setSortingEnabled(True)
        self.frequency.cellDoubleClicked.connect(self._pick_tag)
        splitter = QSplitter(Qt.Horizontal)
        splitter.addWidget(self.changes)
        splitter.addWidget(self.frequency)
        splitter.setMinimumHeight(200)
        top = QHBoxLayout()
        top.addWidget(plain_label("Folder", False))
        top.addWidget(self.folder, 1)
        top.addWidget(self.undo_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(edits)
        layout.addWidget(self.model_panel)
        layout.addWidget(self.status)
        layout.addWidget(splitter, 1)
        binder.changed.connect(self._config_changed)
        self._config_changed("*")

    # -- the folder -------------------------------------------------------------------------
    def current_folder(self) -> Path | None:
        data = self.folder.currentData()
        return Path(data) if data else None

    def _config_changed(self, key: str) -> None:
        if key not in ("*", "dataset.folders", "dataset.caption_extension", "dataset.trigger_word"):
            return
        # Not filled in: an edit that only removes a tag must not also add the trigger word
        # to every file (training puts it first anyway, from the Trigger word field).
        trigger = self.binder.config.dataset.trigger_word
        self.first.setPlaceholderText(
            f"e.g. the trigger word {trigger!r}: moved first, added where missing" if trigger
            else "the trigger word: moved first, added where missing")
        shown = [self.folder.itemData(i) for i in range(self.folder.count())]
        folders = [str(f.path) for f in self.binder.config.dataset.folders]
        if folders != shown:
            current = self.folder.currentData()
            self.folder.blockSignals(True)
            self.folder.clear()
            for path in folders:
                self.folder.addItem(Path(path).name or path, path)
                self.folder.setItemData(self.folder.count() - 1, path, Qt.ToolTipRole)
            if current in folders:
                self.folder.setCurrentIndex(folders.index(current))
            self.folder.blockSignals(False)
            self._folder_changed()
        self.enable()

    def _folder_changed(self, *_: object) -> None:
        self.changes.setRowCount(0)
        self.model_panel.reset_confirmation()
        if self.current_folder() is None:
            self.say("Add an image folder above to use the caption tools.")
        self.count_tags()
        self.enable()

    def common_args(self) -> list[str]:
        dataset = self.binder.config.dataset
        return [f"--caption-extension={dataset.caption_extension}",
                f"--separator={dataset.caption_separator}"]

    # -- running a tool ---------------------------------------------------------------------
    def start(self, args: list[str], text: str) -> bool:
        """Run one tool on the folder; the grid's unsaved caption is saved first."""
        if self.child.running or self.current_folder() is None:
            return False
        self.thumbnails.save_if_edited()
        self.changes.setRowCount(0)
        self._writes = "--dry-run" not in args
        if self._writes:
            self.thumbnails.lock_captions(True)
        self.child.start(args)
        self.say(text)
        self.enable()
        return True

    def run_edit(self, dry_run: bool) -> bool:
        args = []
        # --flag=VALUE: a value such as "-_-" or "-chan" must not read as a flag
        if self.find.text():
            args += [f"--find={self.find.text()}", f"--replace={self.replace.text()}"]
            args += ["--regex"] if self.regex.isChecked() else []
        args += [f"--add-tag={tag}" for tag in tags_of(self.add_tags.text())]
        args += [f"--remove-tag={tag}" for tag in tags_of(self.remove_tags.text())]
        if self.first.text().strip():
            args += [f"--first={self.first.text().strip()}"]
        if not args:
            self.say("Say what to change: text to find, tags to add or remove, or a trigger word.",
                     problem=True)
            return False
        args = ["captions", str(self.current_folder()), "--json", *self.common_args(), *args]
        return self.start(args + (["--dry-run"] if dry_run else []),
                          "Previewing..." if dry_run else "Changing the captions...")

    def undo(self) -> bool:
        return self.start(["caption", str(self.current_folder()), "--undo", "--json"],
                          "Undoing the last change...")

    def add_row(self, image: str, before: str | None, after: str | None) -> None:
        row = self.changes.rowCount()
        self.changes.insertRow(row)
        cells = (Path(image).name, "(no caption)" if before is None else before,
                 "(unchanged)" if after is None else after)
        for column, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(text if column else image)
            self.changes.setItem(row, column, item)

    def _line(self, message: dict) -> None:
        if "changes" in message:  # `captions --json`: the whole edit at once
            for change in message["changes"]:
                self.add_row(change["caption_file"], change["before"], change["after"])
            self.say(f"{message['changed']} caption(s) " + (
                "would change: Apply writes them." if message["dry_run"]
                else "changed. Undo last change puts them back."))
        elif message.get("event") == "undone":
            self.say(f"Restored {message['restored']} caption file(s) as they were.")
        else:
            self.model_panel.handle(message)

    def _ended(self, code: int, error: str) -> None:
        if error:
            self.say(error, problem=True)
        elif code not in (0, 130):
            self.say(f"The caption tool stopped unexpectedly (exit code {code}).", problem=True)
        self.model_panel.ended(code)
        if self._writes:
            self.thumbnails.lock_captions(False)
            self.thumbnails.reload_caption()
            self.count_tags()
            self.changed.emit()
        self.enable()

    # -- the tag-frequency table ------------------------------------------------------------
    def count_tags(self) -> None:
        """Count the folder's tags in a child - when the tab is on screen: the window's start
        (and each folder change) already has the health report's scan running."""
        self._counts_stale = not self.isVisible()
        if self._counts_stale:
            return
        folder = self.current_folder()
        self.frequency.setRowCount(0)
        if folder is None or not folder.is_dir():
            return
        self.counter.kill()
        self.counter.start(["captions", str(folder), "--frequency", "--json",
                            *self.common_args()])

    def _counted(self, table: dict) -> None:
        self.frequency.setSortingEnabled(False)
        rows = [(subset, tag, count) for subset, counts in table.items()
                for tag, count in counts.items()]
        self.frequency.setRowCount(len(rows))
        for row, (subset, tag, count) in enumerate(sorted(rows, key=lambda r: (-r[2], r[1]))):
            self.frequency.setItem(row, 0, QTableWidgetItem(subset))
            self.frequency.setItem(row, 1, QTableWidgetItem(tag))
            number = QTableWidgetItem()
            number.setData(Qt.DisplayRole, count)  # sorts as a number
            self.frequency.setItem(row, 2, number)
        self.frequency.setSortingEnabled(True)
        self.frequency.sortItems(2, Qt.DescendingOrder)

    def _count_ended(self, code: int, error: str) -> None:
        if error:
            self.say(error, problem=True)

    def _pick_tag(self, row: int, _column: int) -> None:
        tag = self.frequency.item(row, 1).text()
        tags = tags_of(self.remove_tags.text())
        if tag not in tags:
            self.remove_tags.setText(", ".join(tags + [tag]))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if self._counts_stale:
            self.count_tags()

    # -- state ------------------------------------------------------------------------------
    def say(self, text: str, problem: bool = False) -> None:
        self.status.setText(text)
        set_tone(self.status, ERROR if problem else None)

    def enable(self) -> None:
        idle = not self.child.running and self.current_folder() is not None
        for widget in (self.preview_button, self.apply, self.undo_button):
            widget.setEnabled(idle)
        self.folder.setEnabled(not self.child.running)
        self.model_panel.enable(idle, self.child.running)

    def stop(self) -> None:
        """The window closes: a captioning run is asked to stop between two files."""
        if self.child.running:
            self.child.stop()
            if self.child.process is not None:
                self.child.process.waitForFinished(10_000)
        self.counter.kill()
