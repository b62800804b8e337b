"""Everything the Run section shows about a run, fed one `Event` at a time.

A live job, a replayed `events.jsonl` and a test's fake job all go through `RunMonitor.feed`,
so what a user sees is the same in all three. No torch, and no knowledge of where events come
from.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QLabel, QPlainTextEdit, QProgressBar, QSplitter, QTabWidget,
                               QVBoxLayout, QWidget)

from app.colours import ERROR, set_tone
from app.failure_hints import window_hint
from app.gallery import Gallery
from app.loss_plot import LossPlot
from trainer.events import (LIBRARY, Event, Failed, Finished, Log, Loss, Progress, Sample, Saved,
                            Started, Validation, read_events)


def format_seconds(seconds: float) -> str:
    """'1:02:03' or '2:03'."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _log_line(level: str, text: str) -> str:
    return text if level == "info" else f"[{level}] {text}"


MAX_LOG_LINES = 5000


class RunMonitor(QWidget):
    """Progress bar, loss plot, sample gallery and log of one run."""

    finished = Signal(object)  # the Finished or Failed event
    saved = Signal(object)     # a Saved event

    def __init__(self) -> None:
        super().__init__()
        self.progress = QProgressBar()
        self.progress.setFormat("waiting")
        self.progress.setTextVisible(True)
        self.status = QLabel("No run yet.")
        self.status.setTextFormat(Qt.PlainText)
        self.status.setWordWrap(True)
        self.plot = LossPlot()
        self.gallery = Gallery()
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(MAX_LOG_LINES)
        # What libraries print (torchvision's notices, diffusers' warnings) is kept but shown
        # only on request: the default view is the run's own story.
        self.lines: list[tuple[str, str]] = []  # (level, text) of every log line
        self.show_library = QCheckBox("Show library messages")
        self.show_library.setToolTip("Also show what torch, diffusers and other libraries "
                                     "printed (notices and warnings; rarely needed).")
        self.show_library.toggled.connect(self._refill_log)
        log_page = QWidget()
        log_layout = QVBoxLayout(log_page)
        log_layout.setContentsMargins(0, 0, 0, 0)
        log_layout.addWidget(self.show_library)
        log_layout.addWidget(self.log, 1)
        tabs = QTabWidget()
        tabs.addTab(self.gallery, "Samples")
        tabs.addTab(log_page, "Log")
        self.tabs = tabs
        split = QSplitter(Qt.Vertical)
        split.addWidget(self.plot)
        split.addWidget(tabs)
        split.setSizes([260, 300])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)
        self.reset()

    def reset(self) -> None:
        """Empty everything for a new run (or a past run about to be replayed)."""
        self.total = 0
        self.step = 0
        self.paused = False
        self.last_progress: Progress | None = None
        self.run_dir = ""
        self.lora_files: list[str] = []
        self.checkpoints: list[str] = []
        self.outcome: Event | None = None
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("waiting")
        self.status.setText("No run yet.")
        set_tone(self.status, None)
        self.plot.clear()
        self.gallery.clear()
        self.lines = []
        self.log.clear()

    def feed(self, events: list[Event]) -> None:
        """Show a batch of events (one timer tick's worth). Only the batch's last Progress is
        shown (each one repaints the progress bar at once) and the plot redraws once."""
        last_progress = max((i for i, e in enumerate(events) if isinstance(e, Progress)),
                            default=-1)
        for index, event in enumerate(events):
            if index == last_progress or not isinstance(event, Progress):
                self._one(event)
        if any(isinstance(e, (Loss, Validation)) for e in events):
            self.plot.redraw()

    def set_paused(self, paused: bool) -> None:
        """Say "paused" in the progress text instead of a speed and an ETA that no longer run
        (a Progress of the step that was in flight moves the step on and keeps "paused");
        unpausing brings the last speed and ETA back."""
        self.paused = paused
        self._show_progress()

    def _show_progress(self) -> None:
        """The bar and its text for the current step, paused state and last Progress."""
        self.progress.setRange(0, max(1, self.total))
        self.progress.setValue(self.step)
        text = f"step {self.step} / {self.total}"
        last = self.last_progress
        if self.paused:
            text += " · paused"
        elif last is not None:
            # Progress.epoch counts from 0 (the trainer's position); people count from 1
            text += (f" · epoch {last.epoch + 1} · {last.it_per_s:.2f} it/s · "
                     f"{format_seconds(last.eta_s)} left")
        self.progress.setFormat(text)

    def _started(self, event: Started) -> None:
        self.run_dir, self.total = event.run_dir, event.total_steps
        self.step, self.last_progress = event.resumed_from_step, None
        set_tone(self.status, None)
        self._show_progress()
        resumed = ""
        if event.resumed_from_step:
            resumed = f", resumed at step {event.resumed_from_step}"
            # steps after the checkpoint (a run killed after its last save) are trained again
            self.plot.keep_until(event.resumed_from_step)
            if not self.plot.steps:  # a live run: the steps before the resume are on disk
                self._show_earlier(Path(event.run_dir), event.resumed_from_step)
        self.status.setText(f"Training in {event.run_dir}{resumed}")
        self._log("info", f"started: {event.total_steps} steps in {event.run_dir}{resumed}")

    def _show_earlier(self, run_dir: Path, step: int) -> None:
        """The loss points and previews up to `step` that the run folder's log holds from the
        run (or runs) this one resumes."""
        for event in read_events(run_dir, load_images=True):
            if isinstance(event, (Loss, Validation, Sample)) and event.step <= step:
                self._one(event)
        self.plot.redraw()

    def _finished(self, event: Finished) -> None:
        self.outcome, self.paused, self.step = event, False, event.step
        self.progress.setRange(0, max(1, self.total))
        self.progress.setValue(self.progress.maximum() if event.step >= self.total
                               else event.step)
        # the run's last speed figure, the one the progress text showed while it trained
        speed = (f" · {self.last_progress.it_per_s:.2f} it/s" if self.last_progress else "")
        done = "finished" if event.step >= self.total else "stopped early"
        self.progress.setFormat(f"step {event.step} / {self.total} · {done}{speed}")
        early = "" if event.step >= self.total else f" (stopped early at step {event.step})"
        self.status.setText(f"Finished{early}. LoRA file: {event.path}")
        self._log("info", f"finished at step {event.step}: {event.path}")
        self.finished.emit(event)

    def _one(self, event: Event) -> None:
        if isinstance(event, Started):
            self._started(event)
        elif isinstance(event, Progress):
            self.step, self.total, self.last_progress = event.step, event.total, event
            self._show_progress()
        elif isinstance(event, Loss):
            self.plot.add(event.step, event.loss, event.lr)
        elif isinstance(event, Validation):
            self.plot.add_validation(event.step, event.loss)
        elif isinstance(event, Sample):
            self.gallery.add(event)
        elif isinstance(event, Log):
            self._log(event.level, event.text)
        elif isinstance(event, Saved):
            (self.lora_files if event.kind == "lora" else self.checkpoints).append(event.path)
            self._log("info", f"saved {event.kind} at step {event.step}: {event.path}")
            self.saved.emit(event)
        elif isinstance(event, Finished):
            self._finished(event)
        elif isinstance(event, Failed):
            self.outcome, self.paused = event, False
            self.progress.setFormat(f"step {self.step} / {self.total} · stopped")
            hint = f"\n{window_hint(event, self.run_dir, started=self.total > 0)}"
            self.status.setText(f"Training stopped: {event.message}{hint}")
            set_tone(self.status, ERROR)
            self._log("error", f"{event.kind}: {event.message}{hint}")
            self.finished.emit(event)

    def note(self, text: str) -> None:
        """A line of the window's own in the log (a command sent, like '> pause')."""
        self._log("info", text)

    def _log(self, level: str, text: str) -> None:
        self.lines = (self.lines + [(level, text)])[-MAX_LOG_LINES:]
        if level != LIBRARY or self.show_library.isChecked():
            self.log.appendPlainText(_log_line(level, text))

    def _refill_log(self) -> None:
        shown = self.show_library.isChecked()
        self.log.setPlainText("\n".join(_log_line(level, text) for level, text in self.lines
                                        if shown or level != LIBRARY))
