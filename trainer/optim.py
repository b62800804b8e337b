"""Optimizer and learning-rate schedule from the config."""

from __future__ import annotations

import importlib.util

import torch
from diffusers.optimization import get_scheduler

from trainer.config import TrainConfig
from trainer.network import LoraNetwork


class OptimizerError(ValueError):
    """The chosen optimizer cannot run here."""


def build_optimizer(config: TrainConfig, network: LoraNetwork,
                    device: torch.device) -> torch.optim.Optimizer:
    """One parameter group for the U-Net adapters, one per trained text encoder (own rates)."""
    opt = config.optimizer
    groups = [{"params": network.parameters("unet"), "lr": opt.learning_rate}]
    for component in ("text_encoder", "text_encoder_2"):
        params = network.parameters(component)
        if params:
            groups.append({"params": params, "lr": config.text_encoder_rate(component)})
    common = {"weight_decay": opt.weight_decay, "betas": opt.betas}
    if opt.type == "AdamW":
        return torch.optim.AdamW(groups, eps=opt.eps, **common)
    if opt.type == "Lion":
        from lion_pytorch import Lion
        return Lion(groups, **common)
    if opt.type == "Prodigy":
        from prodigyopt import Prodigy
        return Prodigy(groups, eps=opt.eps, **common)
    # AdamW8bit: bitsandbytes' kernels are CUDA-only.
    if device.type != "cuda":
        raise OptimizerError("optimizer.type = 'AdamW8bit' needs an NVIDIA GPU; on this machine "
                             "use 'AdamW' (same results, more memory)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise OptimizerError("optimizer.type = 'AdamW8bit' needs the bitsandbytes package: "
                             "pip install bitsandbytes, or use 'AdamW'")
    import bitsandbytes as bnb
    return bnb.optim.AdamW8bit(groups, eps=opt.eps, **common)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """diffusers' schedules (kohya uses the same ones); counted in optimizer steps."""
    sched = config.schedule
    name = sched.lr_scheduler
    if name == "constant" and sched.lr_warmup_steps:
        name = "constant_with_warmup"  # a warmup the user asked for is never ignored
    return get_scheduler(name, optimizer, num_warmup_steps=sched.lr_warmup_steps,
                         num_training_steps=total_steps)
