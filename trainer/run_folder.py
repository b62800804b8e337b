"""Claiming a run folder: one training in it at a time, and never a folder of other files.

A second training into the same folder while one runs interleaved their events and wrote over
each other's LoRA file; a new run into a folder holding a user's own `config.toml` wrote over
it. A run folder is claimed with a lock file holding the owner's process id and host; a lock
whose process is gone (killed, crashed) is stale and taken over. A new run (not a resume) may
only use a folder that is new or empty.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from trainer.config_io import ConfigError
from trainer.runs import list_checkpoints

LOCK_NAME = ".lora-studio.lock"
RUN_MARKS = ("events.jsonl", "checkpoints")  # what says a folder holds a run already


def _owner(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # unreadable or half-written: no live owner can be named, so it is stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def check_new_run_folder(run_dir: Path) -> None:
    """A new run may use a folder that does not exist yet or is empty; anything else is
    refused in words (a run to resume, or files that are not a run's)."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a folder: pick another --out")
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if not names:
        return
    if any(mark in names for mark in RUN_MARKS):
        if list_checkpoints(run_dir):
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume "
                              f"{run_dir}, or pick another --out")
        raise ConfigError(f"{run_dir} already holds a run that saved no checkpoint (see its "
                          "events.jsonl); pick another --out, or delete that folder first")
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise ConfigError(f"{run_dir} holds files that are not a LoRA Studio run ({shown}); pick "
                      "a new or empty folder for the run")


def claim_run_folder(run_dir: Path, *, new_run: bool) -> bool:
    """Claim `run_dir` for this process. True when this call claimed it (the caller releases
    it), False when this process holds it already (the trainer child claims first, then its
    training loop asks again). Refuses a folder another live training holds."""
    lock = run_dir / LOCK_NAME
    owner = _owner(lock) if lock.exists() else {}
    here = socket.gethostname()
    if owner.get("pid") == os.getpid() and owner.get("host") == here:
        return False
    if owner and owner.get("host") == here and _alive(int(owner.get("pid", 0) or 0)):
        raise ConfigError(f"{run_dir} is in use by another training (process {owner['pid']}); "
                          "wait for it to end, or pick another --out")
    if owner and owner.get("host") != here:
        raise ConfigError(f"{run_dir} is in use by a training on {owner.get('host')!r} (process "
                          f"{owner.get('pid')}); if that is over, delete {lock}")
    if new_run:
        check_new_run_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if owner:
        lock.unlink(missing_ok=True)  # stale: its process is gone
    try:  # exclusive create: of two trainings starting at once, one gets the folder
        handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise ConfigError(f"{run_dir} was just claimed by another training; pick another "
                          "--out") from None
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(json.dumps({"pid": os.getpid(), "host": here}))
    return True


def release_run_folder(run_dir: Path) -> None:
    """Remove this process's lock (another owner's is never touched)."""
    lock = run_dir / LOCK_NAME
    owner = _owner(lock)
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)
