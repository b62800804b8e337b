"""The Run section: Start / Pause / Stop / Sample now / Save now, driving a job from a timer.

The job runs in a child process (trainer.jobs); a 100 ms QTimer polls it without blocking and
hands its events to the RunMonitor. `job_factory` is replaceable so tests can drive a fake job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QSplitter, QVBoxLayout, QWidget)

from app.binding import Binder
from app.colours import ERROR, set_tone
from app.failure_hints import resumable_step
from app.queue_panel import QueuePanel
from app.run_monitor import RunMonitor
from trainer.events import Event, Failed, Finished, read_events
from trainer.jobs import Job, JobSpec
from trainer.runs import runs_folder_problem

POLL_MS = 100
RELEASE_POLL_MS = 500


def default_runs_folder() -> Path:
    return Path.home() / "LoRA Studio" / "runs"


class RunSection(QWidget):
    state_changed = Signal(str)  # idle | running | paused | finished | failed

    resume_requested = Signal(str)  # a stopped run's folder to continue (Resume button)

    def __init__(self, binder: Binder, problems: Callable[[], list[str]],
                 remember: bool = False) -> None:
        """`remember`: the waiting queue is saved and restored (the real window)."""
        super().__init__()
        self.binder = binder
        self.problems = problems
        self.job_factory: Callable[[JobSpec], Job] = Job
        self.job: Job | None = None
        self.paused = False
        # The window is closing: the queue stays as it is (saved) instead of starting its next
        # run with no window left to show it.
        self.holding_queue = False
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.tick)

        self.runs_folder = QLineEdit(str(default_runs_folder()))
        self.runs_folder.setToolTip("Each run gets its own folder in here (config, log, "
                                    "samples, checkpoints and the LoRA file).")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._pick_runs_folder)
        where = QHBoxLayout()
        where.addWidget(QLabel("Runs folder"))
        where.addWidget(self.runs_folder, 1)
        where.addWidget(browse)

        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.sample_button = QPushButton("Sample now")
        self.save_button = QPushButton("Save now")
        self.queue_button = QPushButton("Add to queue")
        self.queue_panel = QueuePanel(remember)
        self.queue_panel.changed.connect(self.update_buttons)
        self.run_queue_button = QPushButton("Start the queue")
        self.resume_button = QPushButton("Resume")
        tips = {self.start_button: "Start training with these settings (Ctrl+Enter).",
                self.pause_button: "Pause after the current step; press again to continue "
                                   "(Ctrl+P).",
                self.stop_button: "Stop after the current step and save the LoRA (Ctrl+.).",
                self.sample_button: "Make preview images at the next step, also while paused "
                                    "(Ctrl+I).",
                self.save_button: "Save a checkpoint and the LoRA file at the next step.",
                self.queue_button: "Run these settings after the current run ends (change "
                                   "settings and add again to line up several runs).",
                self.run_queue_button: "Start the first run waiting in the queue; the others "
                                       "follow one after another.",
                self.resume_button: "Continue the run that stopped, from its newest "
                                    "checkpoint, in its own folder, with its own settings "
                                    "(its config.toml)."}
        buttons = QHBoxLayout()
        for button, tip in tips.items():
            button.setToolTip(tip)
            buttons.addWidget(button)
        buttons.addStretch()
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.sample_button.clicked.connect(self.sample_now)
        self.save_button.clicked.connect(lambda: self._send("save_now"))
        self.queue_button.clicked.connect(self.add_to_queue)
        self.run_queue_button.clicked.connect(self.start_queue)
        self.resume_button.clicked.connect(
            lambda: self.resume_requested.emit(self.monitor.run_dir))
        self.reason = QLabel()
        self.reason.setTextFormat(Qt.PlainText)
        self.reason.setWordWrap(True)
        set_tone(self.reason, ERROR)

        self.monitor = RunMonitor()
        layout = QVBoxLayout(self)
        layout.addLayout(where)
        layout.addLayout(buttons)
        layout.addWidget(self.reason)
        beside = QSplitter(Qt.Horizontal)
        beside.addWidget(self.monitor)
        beside.addWidget(self.queue_panel)
        beside.setStretchFactor(0, 1)
        beside.setSizes([900, 260])
        layout.addWidget(beside, 1)
        binder.errors_changed.connect(self.update_buttons)
        binder.changed.connect(lambda *_: self.update_buttons())
        self.runs_folder.textChanged.connect(lambda *_: self.update_buttons())
        self.update_buttons()

    # -- state -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.done

    def start_problems(self) -> list[str]:
        """Why a run can't start now: the window's settings, then the runs folder (named
        before the child starts, not found by it)."""
        folder = self.runs_folder.text().strip()
        problem = runs_folder_problem(Path(folder) if folder else default_runs_folder())
        return self.problems() + ([problem] if problem else [])

    def update_buttons(self) -> None:
        problems = [] if self.running else self.start_problems()
        self.start_button.setEnabled(not self.running and not problems)
        self.reason.setText("Can't start yet: " + problems[0] if problems else "")
        self.reason.setVisible(bool(problems))
        self.start_button.setToolTip(problems[0] if problems else
                                     "Start training with these settings (Ctrl+Enter).")
        for button in (self.pause_button, self.stop_button, self.sample_button, self.save_button):
            button.setEnabled(self.running)
        self.pause_button.setText("Continue" if self.paused else "Pause")
        self.queue_button.setEnabled(not problems)
        self.run_queue_button.setVisible(bool(self.queue) and not self.running)
        outcome = self.monitor.outcome
        stopped = outcome is None or isinstance(outcome, Failed) or (
            isinstance(outcome, Finished) and outcome.step < self.monitor.total)
        self.resume_button.setVisible(not self.running and stopped
                                      and resumable_step(self.monitor.run_dir) > 0)

    @property
    def queue(self) -> list[JobSpec]:
        """The runs waiting their turn (the queue panel's list)."""
        return self.queue_panel.specs

    def new_run_dir(self) -> Path:
        name = self.binder.config.output.name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = Path(self.runs_folder.text().strip() or default_runs_folder()) / f"{name}-{stamp}"
        suffix = 1
        claimed = {Path(spec.run_dir) for spec in self.queue}
        if self.job is not None:
            claimed.add(Path(self.job.spec.run_dir))
        while folder.exists() or folder in claimed:
            suffix += 1
            folder = folder.with_name(f"{name}-{stamp}-{suffix}")
        return folder

    # -- commands --------------------------------------------------------------------------
    def add_to_queue(self) -> None:
        """Start now when idle, else run these settings (as they are now) after the others."""
        if self.start_problems():
            return
        if not self.running:
            self.start()
            return
        self.queue_panel.add(JobSpec.from_config(self.binder.config, self.new_run_dir()))

    def start_queue(self) -> Job | None:
        """Start the first waiting run (a queue restored after a restart waits for this)."""
        self.holding_queue = False
        if self.running or not self.queue:
            return None
        return self.start(self.queue_panel.take_next())

    def start(self, spec: JobSpec | None = None) -> Job | None:
        if self.running or (spec is None and self.start_problems()):
            return None
        spec = spec or JobSpec.from_config(self.binder.config, self.new_run_dir())
        self.monitor.reset()
        self.monitor.run_dir = spec.run_dir  # known before the child says Started
        self.monitor.plot._build()  # now, not at the first loss point while training runs
        self.monitor.status.setText(f"Starting the trainer in {spec.run_dir} ...")
        self.job = self.job_factory(spec)
        self.job.start()
        self.paused = False
        self.timer.start()
        self.update_buttons()
        self.state_changed.emit("running")
        return self.job

    def _send(self, command: str) -> None:
        if self.running:
            self.job.send(command)
            self.monitor.note(f"> {command.replace('_', ' ')}")

    def sample_now(self) -> None:
        """Previews at the next step boundary; a paused run makes them and stays paused."""
        self._send("sample_now")

    def toggle_pause(self) -> None:
        if not self.running:
            return
        self._send("resume" if self.paused else "pause")
        self.paused = not self.paused
        self.monitor.set_paused(self.paused)
        self.update_buttons()
        self.state_changed.emit("paused" if self.paused else "running")

    def stop(self) -> None:
        if not self.running:
            return
        if self.paused:
            self._send("resume")
            self.paused = False
            self.monitor.set_paused(False)
        self._send("stop")
        self.monitor.status.setText("Stopping after this step; the LoRA is being saved...")

    def kill(self) -> None:
        """End the trainer now (Quit while a stop takes too long); its checkpoints stay."""
        if self.running:
            self.job.kill()
            self.tick()

    def tick(self) -> list[Event]:
        if self.job is None:
            self.timer.stop()
            return []
        events = self.job.poll(0.0)
        if events:
            self.monitor.feed(events)
        if self.job.done:
            self.timer.stop()
            self._release_later(self.job)
            self.paused = False
            self.update_buttons()
            self.state_changed.emit(self.job.state)
            self._ended(self.job)
            if self.queue and not self.holding_queue:
                self.start(self.queue_panel.take_next())
        return events

    def _release_later(self, job: Job, tries: int = 20) -> None:
        """The child winds down after its last event: poll it until it has exited, so its
        queues close and a failed start's empty run folder is tidied (trainer.jobs)."""
        if not getattr(job, "released", True) and tries:
            QTimer.singleShot(RELEASE_POLL_MS, self,
                              lambda: (job.poll(0.0), self._release_later(job, tries - 1)))

    def _ended(self, job: Job) -> None:
        """The ended run stays one click away in the queue panel after the next one starts."""
        event = self.monitor.outcome
        if isinstance(event, Finished):
            early = event.step < self.monitor.total
            outcome = f"stopped at step {event.step}" if early else "finished"
            lora = event.path
        else:
            outcome = f"failed ({event.kind})" if isinstance(event, Failed) else "ended"
            lora = ""
        self.queue_panel.add_finished(job.spec.config["output"]["name"], job.spec.run_dir,
                                      outcome, lora)

    def resume(self, run_dir: Path) -> Job | None:
        """Continue a stopped run in its own folder from its newest checkpoint."""
        if self.running or self.start_problems():
            return None
        config = self.binder.config.model_copy(deep=True)
        config.output.dir = Path(run_dir)  # where the folder is now, not where it once was
        return self.start(JobSpec.from_config(config, Path(run_dir), resume=Path(run_dir)))

    # -- past runs -------------------------------------------------------------------------
    def open_run(self, run_dir: Path) -> int:
        """Show a finished (or killed) run's curve, gallery and log again."""
        events = read_events(Path(run_dir), load_images=True)
        self.monitor.reset()
        self.monitor.feed(events)
        if not events:
            self.monitor.status.setText(f"No events.jsonl in {run_dir}")
        elif self.monitor.outcome is None:
            self.monitor.status.setText(f"{run_dir}: this run did not finish (stopped or killed)")
        self.update_buttons()
        return len(events)

    def _pick_runs_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Runs folder", self.runs_folder.text())
        if path:
            self.runs_folder.setText(path)
