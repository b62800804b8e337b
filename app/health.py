"""The dataset health report: which files are used, which are skipped and why, bucket counts.

The scan is the trainer's own (`lora-train validate`), run as a child process through QProcess
with the window's current settings, so the report is exactly what training will see and the
window never waits for it. Skipped files are listed in the palette's error colour; past
MAX_LINES of them one line says how many more there are (the window stays quick with 10,000).
"""

from __future__ import annotations


from PySide6.QtCore import QEvent, QProcess, Qt, QTimer, Signal
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton,
                               QVBoxLayout, QWidget)

from app.binding import Binder
from app.colours import ERROR, tone_colour
from app.trainer_process import discard, last_json_object, start_python, temporary_config

MAX_LINES = 500


class HealthReport(QWidget):
    done = Signal(int)  # how many files were skipped
    # The scan's figures (trainer.data.report.report_counts), or None when it failed: the
    # folder table and the step calculator show these, so every count is the trainer's.
    counted = Signal(object)

    def __init__(self, binder: Binder) -> None:
        super().__init__()
        self.binder = binder
        self.process: QProcess | None = None
        self.skipped: list[str] = []
        self.counts: dict | None = None  # the last scan's figures
        self.button = QPushButton("Check dataset")
        self.button.setToolTip("Scan the folders the way training will, and list every file "
                               "that can't be used and why.")
        self.button.clicked.connect(self.check)
        self.summary = QLabel("Add folders, then check them.")
        self.summary.setTextFormat(Qt.PlainText)
        self.summary.setWordWrap(True)
        self.lines = QListWidget()
        self.lines.setMinimumHeight(120)
        self.lines.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.button)
        row.addWidget(self.summary, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.lines)
        self._later = QTimer(self)
        self._later.setSingleShot(True)
        self._later.setInterval(600)
        self._later.timeout.connect(self.check)
        binder.changed.connect(self._maybe_recheck)
        self._later.start()  # the config the window starts with is checked too

    def _maybe_recheck(self, key: str) -> None:
        if key in ("*", "dataset.folders", "dataset.caption_extension", "dataset.min_image_side",
                   "dataset.resolution", "dataset.enable_bucket", "dataset.batch_size",
                   "dataset.validation_split", "dataset.validation_seed",
                   "dataset.masked_loss"):
            self._later.start()

    @property
    def pending(self) -> bool:
        """A check is due (an edit a moment ago) or running."""
        return self._later.isActive() or self.process is not None

    def check_soon(self) -> None:
        """Check again a moment from now (edits come in bursts; one scan covers them)."""
        self._later.start()

    def check(self) -> bool:
        if self.process is not None:
            self._later.start()  # one scan at a time; check again when this one ends
            return False
        if not self.binder.config.dataset.folders and self.binder.config.dataset.kohya_config is None:
            self.summary.setText("Add folders, then check them.")
            self.lines.clear()
            return False
        self._config_file = temporary_config(self.binder.config, "check.toml")
        self.summary.setText("Checking...")
        self.counted.emit(None)  # counting again: the figures shown so far may be stale
        self.button.setEnabled(False)
        self.process = start_python(self, ["-m", "trainer.cli", "validate", "--json",
                                           "--config", str(self._config_file)], self._show)
        return True

    def _show(self, code: int, status) -> None:
        output = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        self.process = None
        counts = last_json_object(output)
        text = counts.pop("report") if counts else output  # else an error, said in words
        self.button.setEnabled(True)
        discard(self._config_file)
        self.lines.clear()
        self.skipped = []
        in_skipped = False
        bad = tone_colour(ERROR)
        lines = [line for line in text.splitlines() if line.strip()]
        for line in lines:
            if line.startswith("Skipped"):
                in_skipped = True
            elif not line.startswith(" "):
                in_skipped = False
            skipped = in_skipped and line.startswith(" ")
            if skipped:
                self.skipped.append(line.strip())
            if self.lines.count() == MAX_LINES:
                continue
            item = QListWidgetItem(line)
            if skipped:
                item.setForeground(bad)
                item.setToolTip("This file is left out of training.")
                item.setData(Qt.UserRole, ERROR)
            self.lines.addItem(item)
        if self.lines.count() == MAX_LINES:
            self.lines.addItem(f"... {len(lines) - MAX_LINES:,} more lines: save the settings "
                               "and run `lora-train validate --config FILE` to see them all")
        first = text.strip().splitlines()[0] if text.strip() else f"the check failed ({code})"
        self.summary.setText(first + (f" - {len(self.skipped)} file(s) skipped"
                                      if self.skipped else ""))
        self.done.emit(len(self.skipped))
        self.counts = counts
        self.counted.emit(counts)

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.type() in (QEvent.PaletteChange, QEvent.ApplicationPaletteChange):
            # light <-> dark: the skipped lines stay readable
            bad = tone_colour(ERROR)
            for row in range(self.lines.count()):
                if self.lines.item(row).data(Qt.UserRole) == ERROR:
                    self.lines.item(row).setForeground(bad)
        super().changeEvent(event)

    def stop(self) -> None:
        self._later.stop()
        if self.process is not None:
            self.process.finished.disconnect()
            self.process.kill()
            self.process.waitForFinished(2000)
            self.process = None
