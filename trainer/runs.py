"""Summaries of past runs, read from their run folders (no torch: the GUI uses this too)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trainer.events import EVENTS_FILE, Failed, Finished, Loss, Sample, Saved, Started, read_events

CHECKPOINTS_DIR = "checkpoints"
PREFIX = "step-"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of an interrupted save are ignored)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and (p / "state.json").exists()]
    return sorted(found, key=lambda p: p.name)


@dataclass
class RunSummary:
    run_dir: Path
    state: str = "unknown"       # finished | failed | stopped early | running or killed
    steps_done: int = 0
    total_steps: int = 0
    last_loss: float | None = None
    failure: str = ""
    lora_files: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    samples: int = 0


def summarize_run(run_dir: Path) -> RunSummary:
    summary = RunSummary(run_dir)
    for event in read_events(run_dir):
        if isinstance(event, Started):
            summary.total_steps = event.total_steps
            summary.state = "running or killed"
        elif isinstance(event, Loss):
            summary.steps_done, summary.last_loss = event.step, event.loss
        elif isinstance(event, Saved) and event.kind == "lora" and event.path not in summary.lora_files:
            summary.lora_files.append(event.path)
        elif isinstance(event, Sample):
            summary.samples += 1
        elif isinstance(event, Finished):
            summary.state = "finished" if event.step >= summary.total_steps else "stopped early"
        elif isinstance(event, Failed):
            summary.state, summary.failure = "failed", f"{event.kind}: {event.message}"
    summary.checkpoints = [p.name for p in list_checkpoints(run_dir)]
    return summary


def runs_folder_problem(folder: Path) -> str:
    """Why a run folder can't be made inside `folder`, in words ('' when it can). Checked
    before a run starts, so a file chosen as the folder, a parent that is a file, a folder
    without write permission or a read-only disk is named instead of failing in the child."""
    folder = Path(folder).expanduser()
    if not str(folder).strip():
        return "choose a runs folder (Run section)"
    if folder.exists() and not folder.is_dir():
        return f"the runs folder {folder} is a file, not a folder: choose a folder"
    existing = folder
    while not existing.exists():  # the nearest ancestor that exists decides
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return (f"the runs folder {folder} can't be made: {existing} is a file, not a folder; "
                "choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):  # also false on a read-only mount
        where = "" if existing == folder else f" (in {existing})"
        return (f"the runs folder {folder} can't be written{where}: choose a folder you can "
                "write to, or change its permissions")
    return ""


def find_runs(root: Path) -> list[Path]:
    """Run folders under `root` (any folder holding an events log), newest first."""
    found = {p.parent for p in root.rglob(EVENTS_FILE)}
    return sorted(found, key=lambda p: (p / EVENTS_FILE).stat().st_mtime, reverse=True)


def format_summary(summary: RunSummary, *, detailed: bool = False) -> str:
    loss = f"{summary.last_loss:.4f}" if summary.last_loss is not None else "-"
    line = (f"{summary.run_dir}: {summary.state}, step {summary.steps_done}/"
            f"{summary.total_steps}, last loss {loss}")
    if not detailed:
        return line
    lines = [line]
    if summary.failure:
        lines.append(f"  why: {summary.failure}")
    lines += [f"  LoRA file: {path}" for path in summary.lora_files]
    lines.append(f"  checkpoints: {', '.join(summary.checkpoints) or 'none'}")
    lines.append(f"  previews: {summary.samples}")
    if summary.state in ("stopped early", "failed", "running or killed") and summary.checkpoints:
        lines.append(f"  continue with: lora-train train --resume {summary.run_dir}")
    return "\n".join(lines)
