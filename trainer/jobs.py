"""Training jobs in a child process, seen as a stream of typed events.

The GUI and the CLI both use this module, so it imports neither torch nor Qt: the child pays
for torch. Two queues join parent and child: events (child -> parent) and commands (parent ->
child, acted on at step boundaries). A child that dies without saying why (killed, segfault,
out of memory) becomes `Failed(kind="crashed")` as soon as its exit is seen; a child that stops
sending heartbeats becomes `Failed(kind="crashed")` too. Nothing here ever blocks forever.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from trainer.runs import list_checkpoints
from trainer.events import (EVENTS_FILE, Event, EventLog, Failed, Finished, Heartbeat, Log,
                            Started)
from trainer.job_ranks import (HelperRanks, free_port, how_it_ended, is_writer_process,
                               launched_by_torchrun, place)
from trainer.job_spec import JobSpec
from trainer.run_folder import LOCK_NAME

__all__ = ["Job", "JobQueue", "JobSpec"]

COMMANDS = ("stop", "pause", "resume", "sample_now", "save_now")
LEFT_BY_A_FAILED_START = {EVENTS_FILE, "config.toml", LOCK_NAME}
HEARTBEAT_TIMEOUT_S = 30.0
RANK_LOST_GRACE_S = 30.0  # a rank died: rank 0 gets this long to fail on its own (NCCL may hang)
STALL_WARNING_S = 15 * 60.0  # alive but silent this long: reported (caching 10,000 latents is quieter)  # generous: a long cache fill or model load still beats every 0.5 s


@dataclass
class Job:
    """One training run in a spawned child process."""

    spec: JobSpec
    state: str = "pending"  # pending | running | finished | failed
    last_event: Event | None = None
    _process: mp.process.BaseProcess | None = field(default=None, repr=False)
    _events: mp.Queue | None = field(default=None, repr=False)
    _commands: mp.Queue | None = field(default=None, repr=False)
    _last_seen: float = 0.0  # any sign of life (heartbeats included)
    _last_progress: float = 0.0  # the last event that was not a heartbeat
    _paused: bool = False  # a paused run is quiet on purpose
    _made_folder: bool = False  # the run folder did not exist before this job
    _trained: bool = False  # a Started event arrived: training began
    _helpers: HelperRanks | None = field(default=None, repr=False)  # ranks 1.. of N processes

    def start(self) -> None:
        from trainer.worker import run_job  # light module: torch is imported in the child

        self._made_folder = not Path(self.spec.run_dir).exists()

        context = mp.get_context("spawn")
        self._events, self._commands = context.Queue(), context.Queue()
        rank0 = None
        if self.spec.processes > 1 and not launched_by_torchrun():  # torchrun has its own
            port = free_port()
            rank0 = place(0, self.spec.processes, port)
            self._helpers = HelperRanks.start(self.spec, self.spec.processes, port, context)
        self._process = context.Process(target=run_job, name="lora-studio-trainer",
                                        args=(self.spec, self._events, self._commands, rank0),
                                        daemon=True)
        self._process.start()
        self._last_seen = self._last_progress = time.monotonic()
        self.state = "running"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed")

    @property
    def released(self) -> bool:
        """The child has exited and its queues are closed (a done job's `poll` gets here)."""
        return self._events is None and self._commands is None

    def send(self, command: str) -> None:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
        if self._commands is not None and not self.done:
            self._commands.put(command)
            self._paused = command == "pause" or (self._paused and command not in
                                                   ("resume", "stop"))
            self._last_progress = time.monotonic()

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """Events that arrived (waiting up to `timeout` for the first one); never blocks longer."""
        if self._events is None or self.done:
            self._release()
            return []
        out: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                wait = max(0.0, deadline - time.monotonic()) if not out else 0.0
                event = self._events.get(timeout=wait) if wait else self._events.get_nowait()
            except (queue.Empty, EOFError, OSError):
                break
            self._last_seen = time.monotonic()
            if not isinstance(event, Heartbeat):
                self._last_progress = self._last_seen
                out.append(self._note(event))
        if not self.done:
            out.extend(self._check_alive())
        if self.done:
            self._release()
        return out

    def wait(self, timeout: float = 10.0) -> None:
        """Block until the child process has exited (the CLI, before it exits itself)."""
        if self._process is not None:
            self._process.join(timeout)
        for helper in self._helpers.processes if self._helpers else []:
            helper.join(timeout)  # the other ranks leave right after rank 0
        self._release()

    def _release(self) -> None:
        """Drop the queues once the child has exited (never waits: the GUI calls poll)."""
        if self._process is not None and self._process.is_alive():
            return  # still winding down after Finished/Failed; a later poll releases
        if self._helpers is not None and not self._helpers.finished():
            return  # the other ranks are leaving too
        for channel in (self._events, self._commands):
            if channel is not None:
                channel.close()
                channel.join_thread()
        self._events = self._commands = None
        self._tidy_failed_start()

    def _tidy_failed_start(self) -> None:
        """A run that failed before training began (a bad dataset, model or setting) leaves
        no run folder behind: it held only its own log and config, and the failure has been
        reported. A folder that existed before, or holds anything else, is never touched."""
        folder = Path(self.spec.run_dir)
        if (self.state != "failed" or self._trained or not self._made_folder or self.spec.resume
                or not is_writer_process()):  # a torchrun rank > 0 leaves rank 0's folder be
            return
        try:
            if folder.is_dir() and {p.name for p in folder.iterdir()} <= LEFT_BY_A_FAILED_START:
                shutil.rmtree(folder)
        except OSError:
            pass  # tidying is a courtesy; the failure itself was already reported

    def events(self, poll_interval: float = 0.2) -> Iterator[Event]:
        """Every event until the job ends (for the CLI and tests)."""
        while not self.done:
            yield from self.poll(timeout=poll_interval)

    def kill(self) -> None:
        """Abort now (the last checkpoint stays intact: checkpoints are renamed into place)."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        if self._helpers is not None:
            self._helpers.kill()

    def _note(self, event: Event, record: bool = False) -> Event:
        if isinstance(event, Failed) and self._helpers and self._helpers.check():
            # rank 0 failed because another rank died or failed first: that is the reason
            event, record = self._rank_failure(event), True
        if record:
            self._record(event)
        self.last_event = event
        self._trained = self._trained or isinstance(event, Started)
        if isinstance(event, Finished):
            self.state = "finished"
        elif isinstance(event, Failed):
            self.state = "failed"
        return event

    def _rank_failure(self, rank0: Failed) -> Failed:
        """One failure for the whole job: the rank that went first, what rank 0 saw, what
        is left (the checkpoints are rank 0's, written atomically, so the last one loads)."""
        first = self._helpers.failure
        has_checkpoint = bool(list_checkpoints(Path(self.spec.run_dir)))
        return Failed(kind=first.kind,
                      message=f"{first.message}; the job stopped (rank 0: {rank0.message})",
                      hint=first.hint or (
                          "the last checkpoint is intact: resume with --resume RUN_DIR (the "
                          "same number of processes)" if has_checkpoint else
                          "no checkpoint was saved yet; start the run again"))

    def _check_alive(self) -> list[Event]:
        assert self._process is not None
        lost = self._helpers.check() if self._helpers else None
        if lost and self._process.is_alive() and (
                time.monotonic() - self._helpers.failed_at > RANK_LOST_GRACE_S):
            self.kill()  # rank 0 is stuck in a collective with the dead rank: end it
            return [self._crashed(f"it waited {RANK_LOST_GRACE_S:.0f} s for the others and "
                                  "was ended")]
        if self._process.is_alive():
            if time.monotonic() - self._last_seen > HEARTBEAT_TIMEOUT_S:
                self.kill()
                return [self._crashed(f"the trainer stopped responding for "
                                      f"{HEARTBEAT_TIMEOUT_S:.0f} s and was ended")]
            return self._stalled()
        return self._exited()

    def _stalled(self) -> list[Event]:
        """Heartbeats say the child lives, not that it gets anywhere: a run stuck in one call
        (a file on a share that hangs) is reported, once per quiet stretch."""
        quiet = time.monotonic() - self._last_progress
        if self._paused or quiet < STALL_WARNING_S:
            return []
        self._last_progress = time.monotonic()
        last = self.last_event
        since = (f"its last message: {last.text!r}" if isinstance(last, Log) else
                 f"step {last.step}" if hasattr(last, "step") else "it started")
        return [Log("warning", f"no progress for {quiet / 60:.0f} min: the trainer is running "
                               f"but has reported nothing since {since}; if it stays so, stop "
                               "it (a file it reads may be on a disk or share that hangs)")]

    def _exited(self) -> list[Event]:
        """The child is gone: what it managed to send, and why it ended if it did not say."""
        assert self._process is not None
        self._process.join(timeout=1)
        late = []
        while self._events is not None:
            try:
                event = self._events.get(timeout=0.05)
            except (queue.Empty, EOFError, OSError):
                break
            if not isinstance(event, Heartbeat):
                late.append(self._note(event))
        if self.done:
            return late
        code = self._process.exitcode
        return late + [self._crashed(f"the trainer process {how_it_ended(code)} without "
                                     "finishing")]

    def _crashed(self, message: str) -> Failed:
        """The child ended without a word: say so, and append it to the run's log. This runs
        in the window's timer, so it must never raise (a run folder that could not be made
        must not turn into an exception every poll)."""
        has_checkpoint = bool(list_checkpoints(Path(self.spec.run_dir)))
        hint = ("resume from the last checkpoint with --resume RUN_DIR; if it happens again, "
                "lower the batch size or resolution" if has_checkpoint else
                "no checkpoint was saved, so start it again; if it happens again, lower the "
                "batch size or resolution")
        return self._note(Failed(kind="crashed", message=message, hint=hint), record=True)

    def _record(self, event: Event) -> None:
        """Append what the job (not the child) concluded to the run's log."""
        if not is_writer_process():
            return  # rank 0's process writes the run's log
        try:
            log = EventLog(Path(self.spec.run_dir))  # the child is done: ours to append to
            log.write(event)
            log.close()
        except OSError:
            pass  # the event still reaches the caller; only the file record is missing


class JobQueue:
    """Jobs run one after another; `poll()` drives it (the GUI calls it from a timer)."""

    def __init__(self, on_event: Callable[[Job, Event], None] = lambda job, event: None) -> None:
        self.jobs: list[Job] = []
        self.on_event = on_event

    def add(self, spec: JobSpec) -> Job:
        job = Job(spec)
        self.jobs.append(job)
        return job

    @property
    def current(self) -> Job | None:
        return next((job for job in self.jobs if job.state == "running"), None)

    def poll(self, timeout: float = 0.0) -> None:
        job = self.current
        if job is None:
            job = next((j for j in self.jobs if j.state == "pending"), None)
            if job is None:
                return
            job.start()
        for event in job.poll(timeout):
            self.on_event(job, event)

    def run_all(self, poll_interval: float = 0.2) -> None:
        while any(not job.done for job in self.jobs):
            self.poll(poll_interval)
