"""Export any saved checkpoint of a run as the LoRA file, and show the verification report
(app.verify_report: one row per check) above the export's full output.

The export needs torch, so it runs `python -m trainer.cli export ...` as a child process
(QProcess): the window never loads torch and never waits on it. An existing file (the run's own
LoRA, an earlier export) is replaced only after a question naming it; a finished export says
where the file is and offers to show its folder.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QProcess, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QMessageBox, QPlainTextEdit,
                               QPushButton, QVBoxLayout, QWidget)

from app.binding import Binder
from app.trainer_process import start_python
from app.verify_report import CheckList
from trainer.network_kinds import KINDS, NetworkKind


def checkpoints_of(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-")),
                  reverse=True)


def validation_loss_of(checkpoint: Path) -> float | None:
    """The validation loss a checkpoint was saved with (its metadata.json), if any."""
    try:
        value = json.loads((checkpoint / "metadata.json").read_text("utf-8")).get(
            "lora_studio_validation_loss")
        return float(value) if value is not None else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def run_kind(run_dir: Path) -> NetworkKind | None:
    """The network kind a run trained (its config.toml); None when it cannot be read."""
    try:
        with open(run_dir / "config.toml", "rb") as handle:
            kind = (tomllib.load(handle).get("network") or {}).get("kind", "lora")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return KINDS.get(kind) if isinstance(kind, str) else None


def export_arguments(binder: Binder, checkpoint: Path, out: Path) -> list[str]:
    """The `lora-train export` command line for the config's export settings."""
    meta, output = binder.config.metadata, binder.config.output
    args = ["-m", "trainer.cli", "export", str(checkpoint), "--out", str(out),
            "--precision", output.save_precision]
    for flag, value in (("--title", meta.title), ("--author", meta.author),
                        ("--description", meta.description), ("--trigger", meta.trigger_phrase),
                        ("--license", meta.license)):
        if value:
            args += [flag, value]
    for tag in meta.tags:
        args += ["--tag", tag]
    if meta.cover_image:
        args += ["--cover", str(meta.cover_image)]
    if meta.hide_folder_names:
        args.append("--hide-folder-names")
    if not output.verify:
        args.append("--no-verify")
    return args


class Exporter(QWidget):
    """Checkpoint picker + Export button + the report the export printed."""

    finished = Signal(int, str)  # exit code, the file written
    run_changed = Signal(object)  # the run folder shown (Path or None): Compare lists its steps

    def __init__(self, binder: Binder) -> None:
        super().__init__()
        self.binder = binder
        self.run_dir: Path | None = None
        self.process: QProcess | None = None
        self.out: Path | None = None
        # replaceable, like `ask_replace`, so that tests open no file manager
        self.open_url: Callable[[QUrl], bool] = QDesktopServices.openUrl
        self.checkpoint = QComboBox()
        self.checkpoint.setToolTip("Which saved step to export; an earlier one may look better "
                                   "than the last if the LoRA overcooked.")
        self.checkpoint.setMinimumWidth(260)
        self.button = QPushButton("Export LoRA file")
        self.button.setToolTip("Write the .safetensors file with the settings above, then check it.")
        self.button.clicked.connect(self.export)
        self.where = QLabel("Open or finish a run to export one of its checkpoints.")
        self.where.setTextFormat(Qt.PlainText)
        self.where.setWordWrap(True)
        self.loads_in = QLabel()  # where the run's network kind loads as trained
        self.loads_in.setObjectName("export:loads-in")
        self.loads_in.setTextFormat(Qt.PlainText)
        self.loads_in.setWordWrap(True)
        self.result = QLabel()
        self.result.setTextFormat(Qt.PlainText)
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextSelectableByMouse)  # the path can be copied
        self.show_button = QPushButton("Show in folder")
        self.show_button.setToolTip("Open the folder that holds the exported file.")
        self.show_button.clicked.connect(self.show_in_folder)
        self.checks = CheckList()
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setPlaceholderText("What the export prints appears here.")
        self.report.setMinimumHeight(110)
        row = QHBoxLayout()
        row.addWidget(QLabel("Checkpoint"))
        row.addWidget(self.checkpoint, 1)
        row.addWidget(self.button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.where)
        layout.addWidget(self.loads_in)
        layout.addLayout(row)
        done = QHBoxLayout()
        done.addWidget(self.result, 1)
        done.addWidget(self.show_button)
        layout.addLayout(done)
        layout.addWidget(self.checks)
        layout.addWidget(self.report)
        self._show_result("", ready=False)
        self.set_run_dir(None)

    def set_run_dir(self, run_dir: Path | str | None) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self.checkpoint.clear()
        scores = {}
        for path in checkpoints_of(self.run_dir) if self.run_dir else []:
            score = validation_loss_of(path)
            label = f"step {int(path.name.split('-')[1])}"
            self.checkpoint.addItem(label + (f" · validation {score:.4f}" if score is not None
                                             else ""), str(path))
            if score is not None:
                scores[self.checkpoint.count() - 1] = score
        has = self.checkpoint.count() > 0
        self.button.setEnabled(has and self.process is None)
        why = ""
        if len(scores) > 1:  # the checkpoint that did best on the held-out images
            best = min(scores, key=scores.get)
            self.checkpoint.setCurrentIndex(best)
            why = (f" — {self.checkpoint.itemText(best).split(' · ')[0]} is picked: its "
                   f"validation loss ({scores[best]:.4f}) is the lowest of {len(scores)} "
                   "checkpoints (the held-out images, never trained on)")
        if self.run_dir is not None:
            self.where.setText(f"Run: {self.run_dir}{why}" if has else
                               f"Run: {self.run_dir} (no checkpoints saved yet)")
        self.run_changed.emit(self.run_dir)
        kind = run_kind(self.run_dir) if self.run_dir else None
        self.loads_in.setText(f"{kind.label} file. {kind.loads_in}" if kind else "")
        self.loads_in.setVisible(kind is not None)

    def target(self) -> Path | None:
        if self.run_dir is None or self.checkpoint.currentIndex() < 0:
            return None
        output = self.binder.config.output
        folder = Path(output.dir) if output.dir else self.run_dir
        latest = self.checkpoint.currentIndex() == 0
        step = int(Path(self.checkpoint.currentData()).name.split("-")[1])
        return folder / (f"{output.name}.safetensors" if latest else
                         f"{output.name}-step{step}.safetensors")

    def ask_replace(self, path: Path) -> bool:
        """Whether to write over an existing file (a question naming it; Keep is the default).
        Tests replace this method, as they do MainWindow.ask_close."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Question)
        box.setWindowTitle("Replace the file?")
        box.setText(f"{path.name} already exists in {path.parent}.\n"
                    "Replace it with the export of this checkpoint?")
        replace = box.addButton("Replace", QMessageBox.AcceptRole)
        box.setDefaultButton(box.addButton("Keep the file", QMessageBox.RejectRole))
        box.exec()
        return box.clickedButton() is replace

    def show_in_folder(self) -> bool:
        """Open the exported file's folder in the system's file manager."""
        if self.out is None:
            return False
        return self.open_url(QUrl.fromLocalFile(str(self.out.parent)))

    def _show_result(self, text: str, ready: bool) -> None:
        self.result.setText(text)
        self.result.setVisible(bool(text))
        self.show_button.setVisible(ready)

    def export(self) -> bool:
        """Start the export of the chosen checkpoint; False when nothing started (no
        checkpoint, an export running, or the user kept the existing file)."""
        out = self.target()
        if out is None or self.process is not None:
            return False
        if out.exists() and not self.ask_replace(out):
            self._show_result(f"Not exported: {out} was kept as it is.", ready=False)
            return False
        self.out = out
        self._show_result("", ready=False)
        self.checks.clear()
        self.report.setPlainText(f"Exporting to {out} ...\n")
        self.process = start_python(self, export_arguments(self.binder, Path(
            self.checkpoint.currentData()), out), self._done, self._read)
        self.button.setEnabled(False)
        return True

    def _read(self) -> None:
        text = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        self.report.moveCursor(self.report.textCursor().MoveOperation.End)
        self.report.insertPlainText(text)

    def _done(self, code: int, status) -> None:
        self._read()
        self.checks.show_report(self.report.toPlainText())
        if code == 0:
            self._show_result(f"Done: the LoRA file is ready at {self.out}", ready=True)
            self.report.appendPlainText(f"Done: the LoRA file is ready at {self.out}")
        else:
            self._show_result(f"Export failed (exit code {code}); the output below says why.",
                              ready=False)
            self.report.appendPlainText(f"Export failed (exit code {code}); see above.")
        self.process = None
        self.button.setEnabled(self.checkpoint.count() > 0)
        self.finished.emit(code, str(self.out))
