"""Turning any exception from a run into a `Failed` event an artist can act on."""

from __future__ import annotations

import errno

from trainer.events import Failed

HINTS = {
    "dataset": "check the dataset folder; `lora-train validate` lists every file it skips and why",
    "model": "pick an SD 1.x, SD 2.x or SDXL model: a diffusers folder or one .safetensors checkpoint",
    "config": "fix the value named above (lora-train config show prints the whole config)",
    "checkpoint": "the run's checkpoints are untouched: resume from another one (`lora-train "
                  "runs show RUN_DIR` lists them) or start a new run",
    "nan": "lower the learning rate or enable gradient clipping (optimizer.max_grad_norm); "
           "the last good checkpoint is kept",
    "out_of_memory": "lower the batch size or resolution, enable gradient checkpointing and "
                     "latent caching, or use mixed precision fp16",
    "disk_full": "free some disk space; the earlier checkpoints and LoRA files are kept, and "
                 "`lora-train train --resume RUN_DIR` continues",
    "rank_lost": "another process of this multi-process job stopped first (see its message); "
                 "the last checkpoint is intact: resume with --resume RUN_DIR",
    "internal": "this is a bug in LoRA Studio; the run folder's events.jsonl has the details",
}


BAD_INPUT = ("config", "dataset", "model", "checkpoint")  # kinds that are the user's to fix: exit 2


def classify(error: BaseException) -> Failed:
    """Map an exception to (kind, one-line message, hint)."""
    from trainer.checkpoint import CheckpointError
    from trainer.config_io import ConfigError
    from trainer.data import DatasetError
    from trainer.export import ExportError
    from trainer.models import ModelError
    from trainer.network import NetworkError
    from trainer.optim import OptimizerError
    from trainer.sampling import PromptError

    kind = "internal"
    if isinstance(error, DatasetError):
        kind = "dataset"
    elif isinstance(error, ModelError):
        kind = "model"
    elif isinstance(error, CheckpointError):
        kind = "checkpoint"
    elif isinstance(error, (ConfigError, NetworkError, OptimizerError, PromptError,
                            ExportError)):
        kind = "config"
    elif type(error).__name__ == "NonFiniteLoss":
        kind = "nan"
    elif type(error).__name__ == "RankLost":  # trainer.distributed
        kind = "rank_lost"
    elif _is_out_of_memory(error):
        kind = "out_of_memory"
    elif isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        kind = "disk_full"
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if kind == "internal":
        message = f"{type(error).__name__}: {message}"
    # an error class may know better what to do than its kind's hint (a captioning model)
    return Failed(kind=kind, message=message, hint=getattr(error, "hint", None) or HINTS[kind])


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    text = str(error).lower()
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ("out of memory" in text or  # CPU: the allocator's
                                             "can't allocate memory" in text))
