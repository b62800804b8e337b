"""What to do after a failed run, in the window's own words.

The trainer's `Failed.hint` speaks to the command line (`--resume RUN_DIR`, `lora-train
validate`); in the window the same failure points to the window's actions (the Health report
tab, Run > Resume) and offers to resume only when the run saved a checkpoint to resume from.
"""

from __future__ import annotations

from pathlib import Path

from trainer.runs import list_checkpoints
from trainer.events import Failed

HINTS = {
    "dataset": "Open the Dataset section's Health report tab: it lists every file that can't "
               "be used and why.",
    "model": "Pick an SD 1.x, SD 2.x or SDXL model in the Base model section: a diffusers "
             "folder or one .safetensors checkpoint.",
    "config": "Fix the setting named above; its section shows it in red.",
    "checkpoint": "The run's checkpoints are untouched: resume from another one (File > Open "
                  "run shows the run), or press Start to begin a new run.",
    "nan": "Lower the learning rate (Training section) or turn on gradient clipping.",
    "out_of_memory": "Lower the batch size or the resolution (Dataset section), or turn on "
                     "gradient checkpointing and fp16 (Training section).",
    "disk_full": "Free some disk space; the earlier checkpoints and LoRA files are kept.",
    "run_folder": "Choose a runs folder you can write to (Run section).",
    "crashed": "If it happens again, lower the batch size or the resolution (Dataset section).",
    "rank_lost": "Another process of this multi-process run stopped first; its message says "
                 "why.",
    "internal": "This is a bug in LoRA Studio; the run folder's events.jsonl has the details.",
}


def resumable_step(run_dir: str | Path | None) -> int:
    """The step of the newest checkpoint in `run_dir` (0: none, nothing to resume)."""
    if not run_dir:
        return 0
    checkpoints = list_checkpoints(Path(run_dir))
    return int(checkpoints[-1].name.split("-")[-1]) if checkpoints else 0


def window_hint(event: Failed, run_dir: str | Path | None, started: bool = True) -> str:
    """The hint the Run page shows for `event`, with Run > Resume only when it can resume.
    `started`: training had begun (a Started event came); a trainer that died before it did
    is not a memory problem to fix with a smaller batch."""
    hint = HINTS.get(event.kind, event.hint)
    if event.kind == "crashed" and not started:
        return ("The trainer ended before training began; the Log tab shows its last words "
                "(tick Show library messages).")
    step = resumable_step(run_dir)
    if step:
        hint += f" Run > Resume continues from the checkpoint at step {step}."
    elif event.kind in ("crashed", "disk_full", "nan", "out_of_memory", "rank_lost"):
        hint += " No checkpoint was saved, so Start begins again."
    return hint
