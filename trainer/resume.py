"""What a checkpoint holds besides the LoRA, and putting it back: optimizer, schedule, gradient
scaler and every random stream, so a resumed run takes exactly the steps the first one would.

Several processes (trainer.distributed): the optimizer, schedule and scaler are the same on every
rank (the same gradients reach them), so rank 0's are saved; the random streams differ per rank
(the LoRA's dropout draws on each rank's own), so each rank's is saved, and a checkpoint resumes
only with the number of processes that wrote it (the data order of a global batch depends on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from trainer import checkpoint as ckpt
from trainer import distributed
from trainer.events import Event, Log


def _rng_state(device: torch.device) -> dict:
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def training_state(ranks: distributed.Ranks, device: torch.device, optimizer, scheduler,
                   scaler, noise_rng: torch.Generator) -> dict:
    """The checkpoint's `training_state.pt` (called on every rank: it gathers their streams)."""
    per_rank = distributed.gather_states(ranks, _rng_state(device))
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "noise_rng": noise_rng.get_state(), **per_rank[0]}
    if ranks.several:
        state["processes"] = ranks.world
        state["rank_rngs"] = per_rank
    if scaler is not None:
        state["grad_scaler"] = scaler.state_dict()
    return state


def processes_problem(saved: int, now: int) -> str | None:
    """Why a checkpoint of `saved` processes can't continue with `now`, or None."""
    if saved == now:
        return None
    return (f"this run was trained by {saved} process{'es' if saved > 1 else ''} and would "
            f"continue with {now}: the samples of each step depend on it (the batch size is per "
            f"process); resume it with --processes {saved} (precision.processes = {saved})")


def restore(resume: Path, now: ckpt.TrainingPosition, ranks: distributed.Ranks,
            device: torch.device, network, optimizer, scheduler, scaler,
            noise_rng: torch.Generator, force: bool,
            send: Callable[[Event], None]) -> ckpt.TrainingPosition:
    """Load a checkpoint into the freshly built objects and return its data position."""
    loaded = ckpt.load_checkpoint(resume)
    problem = processes_problem(loaded.position.processes, now.processes)
    if problem:  # not even --force: another split of the batches is another data order
        raise ckpt.CheckpointError(f"cannot resume from {loaded.path}: {problem}")
    differences = ckpt.resume_differences(loaded.position, now)
    if differences and not force:
        raise ckpt.CheckpointError(
            f"cannot resume from {loaded.path}: " + "; ".join(differences) +
            " (use --force to resume anyway)")
    for difference in differences:
        send(Log("warning", f"resuming despite a change: {difference}"))
    network.load_state_dict(loaded.lora)
    state = loaded.training_state
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    # RNG last: everything above may have consumed random numbers the original run did not.
    mine = state["rank_rngs"][ranks.rank] if ranks.several else state
    torch.set_rng_state(mine["torch_rng"])
    noise_rng.set_state(state["noise_rng"])
    if "cuda_rng" in mine and device.type == "cuda":
        cuda_rng = mine["cuda_rng"]
        if isinstance(cuda_rng, list):  # written before runs had ranks: every GPU's state
            torch.cuda.set_rng_state_all(cuda_rng)
        else:
            torch.cuda.set_rng_state(cuda_rng, device)
    position = loaded.position
    position.total_steps = now.total_steps
    position.dataset, position.config = now.dataset, now.config
    send(Log("info", f"resumed from {loaded.path} at step {position.step}"))
    return position
