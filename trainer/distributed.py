"""Data-parallel training through torch.distributed: one job, N processes.

The processes find each other the way torchrun starts them (env:// rendezvous: MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK). `lora-train train --processes N` and the window
start the N processes on this machine themselves (`trainer.job_ranks`) with those variables;
`torchrun --nnodes ...` runs the same code on several machines. NCCL on CUDA, gloo on a CPU.

What a user can rely on (docs/engine.md, "Several processes"): N processes at batch b train
exactly what one process at batch N*b trains, because
- every rank builds the same list of global batches (N*b samples) and takes its own rows;
- the diffusion noise is drawn for the whole global batch from the same generator on every
  rank, and each rank keeps its rows (`trainer.objective.diffusion_loss(rows=...)`);
- each rank's loss is its rows' sum divided by the global batch's size and the gradients are
  summed across ranks (`sum_gradients`), which makes them the global batch's mean;
- rank 0 alone writes (events, checkpoints, previews, the file) and decides Stop, Pause, Save
  now and Sample now; the others follow its word at every step boundary (`follow_control`).
A rank that dies makes the others' next collective fail (gloo at once, NCCL at the latest after
COLLECTIVE_TIMEOUT_S): that is `RankLost`, which ends the job with its checkpoints intact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Iterable

import torch

if TYPE_CHECKING:
    from trainer.loop import TrainControl

COLLECTIVE_TIMEOUT_S = 15 * 60  # a preview or a slow cache fill on rank 0 must fit in here


class RankLost(RuntimeError):
    """Another process of the job stopped answering (it died, or its machine went away)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank `rank` of `world`, GPU `local_rank` here."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not (self.world >= 1 and 0 <= self.rank < self.world and self.local_rank >= 0):
            raise ValueError(f"rank {self.rank} of world {self.world} (local rank "
                             f"{self.local_rank}) is not a place in a job")

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes the run folder and talks to the user."""
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world > 1

    def rows(self, count: int, per_rank: int) -> slice:
        """This rank's rows of a global batch of `count` samples, `per_rank` each: a bucket's
        last, short batch leaves the later ranks fewer rows, or none."""
        start = min(self.rank * per_rank, count)
        return slice(start, min(start + per_rank, count))


def ranks_from_env(environ: dict[str, str] | None = None) -> Ranks:
    """The place torchrun (or our own launcher) gave this process; one process without it."""
    env = os.environ if environ is None else environ
    try:
        return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                     int(env.get("LOCAL_RANK", 0)))
    except ValueError as error:
        raise ValueError(f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, "
                         f"LOCAL_RANK={env.get('LOCAL_RANK')!r} do not name a place in a "
                         f"job: {error}") from None


def join(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (a no-op for one process); returns the device this rank trains
    on: its own GPU on a CUDA machine."""
    if not ranks.several:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {ranks.rank} wants GPU {ranks.local_rank}, but this "
                               f"machine has {torch.cuda.device_count()}; start at most that "
                               "many processes per machine")
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=ranks.rank, world_size=ranks.world,
                                timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    return device


def leave(ranks: Ranks) -> None:
    if ranks.several:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _collective(what: str, call) -> object:
    """Run one collective; a dead or vanished peer becomes `RankLost`, said in words."""
    try:
        return call()
    except RuntimeError as error:  # DistBackendError and gloo's errors are RuntimeErrors
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise RankLost(f"another training process of this job stopped while {what} "
                       f"({first})") from error


def _device_of(parameters: list[torch.Tensor], fallback: torch.device) -> torch.device:
    return parameters[0].device if parameters else fallback


def sum_gradients(ranks: Ranks, parameters: Iterable[torch.Tensor],
                  extras: list[float]) -> list[float]:
    """Add up every trainable parameter's gradient across ranks (a rank without rows this step
    adds zeros), and `extras` with them in the same message (the step's loss); returns the
    summed extras. One flat buffer, one all_reduce."""
    if not ranks.several:
        return extras
    import torch.distributed as dist

    parameters = list(parameters)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    device = _device_of(parameters, torch.device("cpu"))
    flat = torch.cat([g.reshape(-1).float() for g in grads] +
                     [torch.tensor(extras, dtype=torch.float32, device=device)])
    _collective("adding up gradients", lambda: dist.all_reduce(flat))
    offset = 0
    for parameter, grad in zip(parameters, grads):
        count = grad.numel()
        parameter.grad = flat[offset:offset + count].view_as(grad).to(grad.dtype)
        offset += count
    return flat[offset:].tolist()


def copy_from_writer(ranks: Ranks, parameters: Iterable[torch.Tensor]) -> None:
    """Every rank starts from rank 0's tensors (the same seed makes them equal on one kind of
    machine; this makes it so everywhere)."""
    if not ranks.several:
        return
    import torch.distributed as dist

    for parameter in parameters:
        _collective("starting", lambda: dist.broadcast(parameter.data, src=0))


CONTROL_FLAGS = ("stop", "pause", "sample_now", "save_now")


def follow_control(ranks: Ranks, control: TrainControl, device: torch.device) -> None:
    """At a step boundary, every rank takes rank 0's Stop / Pause / Sample now / Save now, so
    all of them leave the loop, wait or save at the same step."""
    if not ranks.several:
        return
    import torch.distributed as dist

    flags = torch.tensor([float(getattr(control, name).is_set()) for name in CONTROL_FLAGS],
                         device=device if device.type == "cuda" else "cpu")
    _collective("agreeing on the next step", lambda: dist.broadcast(flags, src=0))
    if not ranks.writer:
        for name, value in zip(CONTROL_FLAGS, flags.tolist()):
            event = getattr(control, name)
            event.set() if value else event.clear()


def gather_states(ranks: Ranks, state: dict) -> list[dict]:
    """Every rank's `state` (its RNG states), in rank order, for rank 0's checkpoint."""
    if not ranks.several:
        return [state]
    import torch.distributed as dist

    states: list = [None] * ranks.world
    _collective("saving a checkpoint", lambda: dist.all_gather_object(states, state))
    return states
