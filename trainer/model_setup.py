"""A loaded base model with its LoRA, made ready to train: which parts train, and how the
memory and speed options apply (gradient checkpointing, xformers, torch.compile)."""

from __future__ import annotations

from typing import Callable

import torch

from trainer.config import PrecisionConfig
from trainer.events import Event, Log


def prepare_for_training(base, network, precision: PrecisionConfig, device: torch.device,
                         send: Callable[[Event], None]) -> None:
    """Train modes (the VAE and untrained text encoders stay in eval), then the options; an
    option that can't apply here is said in the log, never a failed run."""
    base.vae.requires_grad_(False).eval()
    base.unet.train()
    trained_encoders = {c: bool(network.parameters(c)) for c in base.text_encoders}
    for component, encoder in base.text_encoders.items():
        encoder.train(trained_encoders[component])
    if precision.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        for component, encoder in base.text_encoders.items():
            if trained_encoders[component]:
                encoder.gradient_checkpointing_enable()
    if precision.attention == "xformers":
        import importlib.util
        if device.type == "cuda" and importlib.util.find_spec("xformers"):
            try:
                base.unet.enable_xformers_memory_efficient_attention()
            except Exception as error:  # noqa: BLE001 - a build that doesn't match torch
                send(Log("warning", f"xformers could not be used ({type(error).__name__}: "
                                    f"{str(error)[:200]}); using SDPA"))
        else:  # SDPA is the default and nearly as fast; never fail a run over this
            send(Log("info", "xformers needs CUDA and the xformers package; using SDPA"))
    if precision.compile:  # in place: the module, its names and its state dict stay
        base.unet.compile()
