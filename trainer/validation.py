"""The validation loss: the held-out images (trainer.data.holdout) scored with fixed noise and
fixed timesteps spread over the schedule, so the number moves only when the model does.

A pass costs one U-Net forward per held-out image (no backward). It draws only from generators
of its own inside `torch.random.fork_rng` and puts the trained modules in eval mode for the pass
(no LoRA dropout), so the training's random streams and modes are untouched: a resume with
validation on stays bit-identical. The loss is the plain mean squared error to the target
(noise, or v for v-prediction models), without the training's min-SNR weights or noise offset:
one number comparable across runs of the same base whatever those settings. With masked loss
an image with a mask is scored over its masked area, as training weighs it.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from trainer.conditioning import Conditioning
from trainer.data import base_caption, derive_seed
from trainer.objective import per_sample_mse
from trainer.sampling import outside_training


def spread_timesteps(count: int, num_train_timesteps: int, seed: int) -> list[int]:
    """`count` timesteps at the middles of equal slices of the schedule, in an order fixed by
    `seed` (so the image that gets a low-noise step does not depend on its file name)."""
    steps = [int((k + 0.5) * num_train_timesteps / count) for k in range(count)]
    random.Random(derive_seed("validation-timesteps", seed)).shuffle(steps)
    return steps


class ValidationLoss:
    """Scores the held-out `items` on the U-Net as it is now; call it at any step."""

    def __init__(self, base, items: Sequence, latents, encode: Callable[[list[str]], Conditioning],
                 seed: int, prediction_type: str, device: torch.device,
                 autocast_dtype: torch.dtype | None, modules: Sequence[torch.nn.Module]) -> None:
        if not items:
            raise ValueError("a validation loss needs at least one held-out image")
        self.base, self.latents, self.encode = base, latents, encode
        self.items = sorted(items, key=lambda item: str(item.path))
        self.seed, self.prediction_type, self.device = seed, prediction_type, device
        self.autocast_dtype, self.modules = autocast_dtype, list(modules)
        self.timesteps = spread_timesteps(len(self.items),
                                          base.noise_scheduler.config.num_train_timesteps, seed)

    def _one(self, index: int, item) -> float:
        scheduler = self.base.noise_scheduler
        latent = self.latents.get(item.path, item.bucket, False)[None].to(self.device)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(
            derive_seed("validation-noise", self.seed, index))).to(latent.device, latent.dtype)
        timestep = torch.tensor([self.timesteps[index]], device=latent.device)
        noisy = scheduler.add_noise(latent, noise, timestep)
        target = (scheduler.get_velocity(latent, noise, timestep)
                  if self.prediction_type == "v_prediction" else noise)
        cond = self.encode([base_caption(item)]).to(self.device)
        sizes = (self.latents.size_ids(item.path, item.bucket, False)[None]
                 if self.base.spec.micro_conditioning else None)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else nullcontext())
        with autocast:
            prediction = self.base.unet(noisy, timestep, cond.context,
                                        **cond.unet_kwargs(sizes)).sample
        mask = self.latents.mask(item.path, item.bucket, False)
        if mask is None:  # the plain number, exactly as before masks existed
            return F.mse_loss(prediction.float(), target.float()).item()
        return per_sample_mse(prediction, target, mask[None].to(latent.device)).item()

    def __call__(self) -> float:
        with outside_training(self.modules), torch.no_grad():
            losses = [self._one(index, item) for index, item in enumerate(self.items)]
        return sum(losses) / len(losses)
