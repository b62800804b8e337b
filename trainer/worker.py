"""The trainer child process: runs one job and turns everything it says into events.

`run_job` is the spawn target. This module has no import-time side effects and imports torch
only inside `run_job`, so the parent can name the target without paying for torch.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.events import LIBRARY, Event, EventLog, Failed, Finished, Heartbeat, Log
from trainer.config_io import ConfigError
from trainer.offline import forbid_network
from trainer.run_folder import claim_run_folder, release_run_folder

if TYPE_CHECKING:
    from multiprocessing import Queue

    from trainer.job_spec import JobSpec
    from trainer.loop import TrainControl

HEARTBEAT_S = 0.5
ORPHAN_CHECK_S = 1.0  # how often the child checks that its parent is still there


class _LogStream(io.TextIOBase):
    """A text stream whose complete lines become `Log` events (stray prints, tqdm bars)."""

    def __init__(self, emit, stream: str) -> None:
        self.emit, self.stream, self.buffer_text = emit, stream, ""

    def write(self, text: str) -> int:
        self.buffer_text += text.replace("\r", "\n")
        *lines, self.buffer_text = self.buffer_text.split("\n")
        for line in lines:
            if line.strip():
                self.emit(Log(LIBRARY, f"{self.stream}: {line.strip()}"))
        return len(text)


class _LogHandler(logging.Handler):
    def __init__(self, emit) -> None:
        super().__init__(logging.WARNING)
        self.emit_event = emit

    def emit(self, record: logging.LogRecord) -> None:
        self.emit_event(Log(LIBRARY, f"{record.levelname.lower()} {record.name}: "
                                     f"{record.getMessage()}"))


def _silence_the_terminal(emit) -> None:
    """Library output must not spill into the parent's terminal: C-level writes go to
    /dev/null; Python-level prints, warnings and library logs become Log events."""
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "TRANSFORMERS_VERBOSITY": "warning", "DIFFUSERS_VERBOSITY": "warning",
                       "TQDM_DISABLE": "1"})
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout, sys.stderr = _LogStream(emit, "stdout"), _LogStream(emit, "stderr")
    warnings.showwarning = lambda message, category, *rest, **kw: emit(
        Log(LIBRARY, f"{category.__name__}: {message}"))
    handler = _LogHandler(emit)
    logging.getLogger().addHandler(handler)
    # diffusers and transformers give their loggers their own stderr handler and stop
    # propagation when first imported: import their logging set-up now, then take it over.
    import diffusers.utils.logging  # noqa: F401
    import transformers.utils.logging  # noqa: F401

    for name in ("diffusers", "transformers", "peft", "huggingface_hub"):
        library = logging.getLogger(name)
        library.handlers = [handler]
        library.propagate = False
        library.setLevel(logging.WARNING)


def _command_poller(commands: Queue, control: TrainControl, emit):
    """Called at every step boundary: act on what the parent asked for."""
    import queue

    def poll(step: int) -> None:
        while True:
            try:
                command = commands.get_nowait()
            except (queue.Empty, OSError, EOFError):
                return
            if command == "stop":
                control.stop.set()
            elif command == "sample_now":
                control.sample_now.set()
            elif command == "save_now":
                control.save_now.set()
            elif command == "pause" and not control.pause.is_set():
                control.pause.set()  # the loop waits at this step boundary, polling us
                emit(Log("info", f"paused after step {step}"))
            elif command == "resume" and control.pause.is_set():
                control.pause.clear()
                emit(Log("info", f"resumed at step {step}"))

    return poll


def _stop_when_orphaned(control: TrainControl) -> None:
    """The child never trains on without its parent: when the parent dies (killed, its
    terminal closed), this process is handed to another parent, and the run stops and saves
    at the next step boundary, as if Stop had been pressed."""
    parent = os.getppid()

    def watch() -> None:
        while not control.stop.wait(ORPHAN_CHECK_S):
            if os.getppid() != parent:
                control.pause.clear()  # a paused run must not wait for a Continue
                control.stop.set()
                return

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def run_job(spec: JobSpec, events: Queue, commands: Queue,
            place: dict[str, str] | None = None) -> None:
    """Spawn target: run one job; the exit code is 0 when it finished, 1 otherwise.

    `place`: this process's rank variables (trainer.job_ranks) when it is one of several
    processes on this machine; under torchrun they are in the environment already. Rank 0
    claims and writes the run folder; the other ranks send only heartbeats and their failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to interpret
    if place:
        os.environ.update(place)  # before torch is imported: torch.distributed reads them
    writer = os.environ.get("RANK", "0") == "0"
    # Before any library is imported: nothing in this process goes online. (The ranks of a
    # job talk through torch.distributed's own C++ sockets, which this guard leaves alone.)
    forbid_network()
    failed = threading.Event()

    def emit(event: Event) -> None:
        if isinstance(event, Failed):
            failed.set()
        if writer or isinstance(event, (Failed, Finished, Heartbeat)):
            events.put(event)

    try:  # claimed before anything is written: a folder in use or of other files is refused
        disk: EventLog | None = None
        if writer:
            claim_run_folder(Path(spec.run_dir), new_run=not spec.resume)
            disk = EventLog(Path(spec.run_dir))  # library output is on record too
    except (OSError, ConfigError) as error:  # say why, don't die silently
        emit(Failed(kind="config", message=str(error), hint="pick another run folder")
             if isinstance(error, ConfigError) else
             Failed(kind="run_folder", message=f"can't create the run folder {spec.run_dir}: "
                                               f"{error.strerror or error}",
                    hint="choose a runs folder you can write to"))
        events.close()
        events.join_thread()
        sys.exit(1)

    def emit_library_output(event: Event) -> None:
        if disk is not None:
            disk.write(event)
        emit(event)

    _silence_the_terminal(emit_library_output)
    alive = threading.Event()

    def heartbeat() -> None:
        while not alive.wait(HEARTBEAT_S):
            events.put(Heartbeat())

    threading.Thread(target=heartbeat, name="heartbeat", daemon=True).start()
    code = 1
    try:
        from trainer.config_io import build_config
        from trainer.loop import TrainControl, train

        config = build_config(spec.config)
        control = TrainControl()
        control.on_step = _command_poller(commands, control, emit)
        _stop_when_orphaned(control)
        for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None:  # sent to the whole process group: stop and save, too
                signal.signal(signum, lambda *_: (control.pause.clear(), control.stop.set()))
        train(config, Path(spec.run_dir), emit=emit, control=control,
              resume=Path(spec.resume) if spec.resume else None, force=spec.force)
        code = 0
    except BaseException as error:  # noqa: BLE001 - every failure must reach the parent
        if not failed.is_set():
            from trainer.failures import classify
            emit(classify(error))
    finally:
        alive.set()
        if disk is not None:
            disk.close()
            release_run_folder(Path(spec.run_dir))
        events.close()
        events.join_thread()  # make sure the last events are flushed before exiting
    sys.exit(code)  # a normal exit: library finalizers (tqdm's lock) clean up after themselves
