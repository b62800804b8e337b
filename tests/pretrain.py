"""A tiny model that is a real (if small) denoiser: the random tiny U-Net fully fine-tuned on
the shapes dataset for a few hundred steps. LoRA on a random network can only bend random
features; on a pretrained one it learns an image the way it does on SD."""

from __future__ import annotations

from pathlib import Path

import torch

from synthetic import make_shapes_dataset
from trainer.config import LossConfig
from trainer.data import image_to_tensor, load_image
from trainer.models import load_base_model, make_tiny_model
from trainer.conditioning import encode_prompts
from trainer.objective import diffusion_loss


def make_pretrained_tiny_model(folder: Path, *, steps: int = 400, seed: int = 0) -> list[float]:
    """Write the model to `folder`; returns the pretraining losses."""
    make_tiny_model(folder, seed=seed)
    paths = make_shapes_dataset(folder.parent / f"{folder.name}-pretrain-data", 12)
    base = load_base_model(folder)
    with torch.no_grad():
        latents = torch.cat([base.vae.encode(image_to_tensor(load_image(p), (64, 64), False)[0][None])
                             .latent_dist.mean * base.vae.config.scaling_factor for p in paths])
        context = encode_prompts(base, [p.with_suffix(".txt").read_text() for p in paths]).context
    base.unet.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(base.unet.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, len(paths), (4,), generator=generator)
        loss = diffusion_loss(base.unet, latents[pick], context[pick], base.noise_scheduler,
                              generator, LossConfig(), "epsilon")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    base.unet.save_pretrained(folder / "unet", safe_serialization=True)
    return losses
