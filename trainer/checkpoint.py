"""Training checkpoints: atomic folders that a resume continues from bit-for-bit.

A checkpoint is `run_dir/checkpoints/step-000123/` holding the LoRA tensors (fp32,
`lora.safetensors`), the optimizer / scheduler / RNG state (`training_state.pt`, read back with
`weights_only=True`), the position in the data order and the fingerprints a resume checks
(`state.json`), and the config that ran (`config.toml`). It is written into a hidden temp folder,
fsynced, then renamed, so a crash leaves either the old set of checkpoints or the new one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.runs import CHECKPOINTS_DIR, PREFIX, list_checkpoints  # the folder layout (torch-free)

if TYPE_CHECKING:  # torch is imported where it is used: listing checkpoints stays cheap
    import torch

# Config fields a run may change on resume without changing what it computes.
# precision.processes is checked on its own (trainer.resume): never free, not even with --force.
RESUME_FREE_FIELDS = {"sampling", "output", "metadata", "precision.threads", "model.path",
                      "precision.processes",
                      "dataset.kohya_config", "dataset.folders", "network.init_from",
                      "dataset.validation_every_n_steps"}


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says why and what to do."""


@dataclass
class TrainingPosition:
    step: int                 # optimizer steps done
    epoch: int                # epoch the next batch belongs to
    batch_in_epoch: int       # batches of that epoch already consumed
    total_steps: int
    dataset: list[list[Any]] = field(default_factory=list)  # [name, size, caption sha] per image
    config: dict[str, Any] = field(default_factory=dict)    # flattened training config
    base_model: str = ""  # the base U-Net's weights fingerprint ("" in older checkpoints)
    processes: int = 1    # data-parallel processes that trained it (trainer.distributed)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def dataset_fingerprint(items: list[tuple[str, int, str]]) -> list[list[Any]]:
    return sorted([name, size, hashlib.sha256(caption.encode()).hexdigest()[:16]]
                  for name, size, caption in items)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(run_dir: Path, position: TrainingPosition, lora: dict[str, torch.Tensor],
                    training_state: dict[str, Any], config_toml: str, keep_last: int,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write one checkpoint atomically, then prune to the newest `keep_last`.

    `metadata` is the exported file's training record as of this step (`metadata.json`), so
    `lora-train export` can turn any checkpoint into a LoRA file without the dataset."""
    import torch
    from safetensors.torch import save_file

    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{position.step:06d}"
    tmp = root / f".{final.name}.tmp"
    for stale in root.glob(f".{PREFIX}*.tmp"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(lora, tmp / "lora.safetensors")
        torch.save(training_state, tmp / "training_state.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(position), indent=1), encoding="utf-8")
        (tmp / "config.toml").write_text(config_toml, encoding="utf-8")
        if metadata is not None:
            (tmp / "metadata.json").write_text(json.dumps(metadata, indent=1), encoding="utf-8")
        for child in tmp.iterdir():
            _fsync_file(child)
        _fsync_dir(tmp)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)  # the earlier checkpoints are untouched
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise OSError(error.errno, f"the disk is full: checkpoint {final.name} could not be "
                          f"written in {root}; the earlier checkpoints are kept. Free some space "
                          "and resume the run", str(final)) from error
        raise
    if final.exists():  # a re-save of the same step (SaveNow at the last step)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: Path) -> Path:
    """A run folder (its newest checkpoint) or one checkpoint folder."""
    if (path / "state.json").exists():
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path} has no checkpoint to resume from (looked in "
                              f"{path / CHECKPOINTS_DIR}); pass a run folder or a step-NNNNNN folder")
    return found[-1]


@dataclass
class LoadedCheckpoint:
    path: Path
    position: TrainingPosition
    lora: dict[str, torch.Tensor]
    training_state: dict[str, Any]


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    import pickle

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve_checkpoint(path)
    try:
        position = TrainingPosition(**json.loads((folder / "state.json").read_text("utf-8")))
        lora = load_file(folder / "lora.safetensors")
        state = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError,
            pickle.UnpicklingError, EOFError) as error:
        earlier = [c for c in list_checkpoints(folder.parent.parent) if c.name < folder.name]
        where = (f"resume from an earlier one: --resume {earlier[-1]}" if earlier else
                 "no earlier checkpoint is left; start the run again")
        # never torch's own advice: it suggests weights_only=False, i.e. running the pickle
        reason = ("its training state holds objects that are not plain tensors"
                  if isinstance(error, pickle.UnpicklingError) else
                  str(error).splitlines()[0][:160] if str(error).strip() else type(error).__name__)
        raise CheckpointError(f"checkpoint {folder} is damaged ({reason}); {where}") from None
    return LoadedCheckpoint(folder, position, lora, state)


def resume_differences(saved: TrainingPosition, now: TrainingPosition) -> list[str]:
    """What changed since the checkpoint, in words; empty when the resume is exact."""
    from trainer.config import TrainConfig

    # a setting added after the checkpoint was written counts as its default there
    defaults = flatten(TrainConfig().model_dump(mode="json"))
    problems = []
    for key in sorted(set(saved.config) | set(now.config)):
        if any(key == f or key.startswith(f + ".") for f in RESUME_FREE_FIELDS):
            continue
        before, after = saved.config.get(key, defaults.get(key)), now.config.get(key)
        if before != after:
            problems.append(f"{key} was {before!r}, now {after!r}")
    if saved.base_model and now.base_model and saved.base_model != now.base_model:
        # model.path may change (a moved file, folder <-> single file): the weights may not
        problems.append("the base model's weights are not the ones this run started from "
                        "(another model, or another version of it); pick the run's own model")
    old = {row[0]: row for row in saved.dataset}
    new = {row[0]: row for row in now.dataset}
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    for label, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            problems.append(f"dataset: {len(names)} image(s) {label} ({shown})")
    return problems
