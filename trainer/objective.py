"""The diffusion training objective: noising, the prediction target and the weighted MSE.

Kept apart from the loop so the step maths can be read (and benchmarked) on its own.

Masked loss (trainer.data.masks): a sample with a mask is averaged over its masked area,
sum(mask x squared error) / (channels x sum(mask)), so a small subject weighs as much as a
whole image; a sample without one (or with a mask of ones) takes the plain mean, the same
number to the bit as without masks.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from trainer.config import LossConfig


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    alpha_bar = alphas_cumprod[timesteps]
    return alpha_bar / (1.0 - alpha_bar)


def draw_noise(generator: torch.Generator, count: int, latent_shape: tuple[int, ...],
               loss: LossConfig, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise and timesteps of a batch of `count` samples, in a fixed order of draws, so a
    process that trains only some rows of the batch draws for all of them and keeps its own."""
    noise = torch.randn((count, *latent_shape), generator=generator)
    if loss.noise_offset:
        # Offset noise: lets the model learn overall brightness (very dark / light images).
        noise = noise + loss.noise_offset * torch.randn((count, latent_shape[0], 1, 1),
                                                        generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (count,), generator=generator)
    return noise, timesteps


def stack_masks(masks: Sequence[torch.Tensor | None] | None,
                latents: torch.Tensor) -> torch.Tensor | None:
    """A batch's (B, 1, h, w) mask on the latents' device, ones for samples without one; None
    when no sample has one (the loss then never looks at masks)."""
    if not masks or all(mask is None for mask in masks):
        return None
    if len(masks) != latents.shape[0]:
        raise ValueError(f"{len(masks)} masks for {latents.shape[0]} latents")
    ones = torch.ones((1, *latents.shape[-2:]))
    return torch.stack([ones if mask is None else mask for mask in masks]).to(
        latents.device, torch.float32)


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean squared errors; with a (B, 1, h, w) mask, each masked sample's error averaged
    over its masked area. Rows whose mask is all ones keep the plain mean (torch.where picks
    it untouched), so they are today's number by construction, not by summation order. The
    area is at least 1 (a quarter of one latent cell's four values): an all-black mask gives 0,
    not 0/0, and a vanishing one cannot blow the gradient up (fp16's loss scale included)."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    plain = error.mean(dim=(1, 2, 3))
    if mask is None:
        return plain
    if mask.shape[0] != error.shape[0] or mask.shape[-2:] != error.shape[-2:]:
        raise ValueError(f"a mask of shape {tuple(mask.shape)} for latents of shape "
                         f"{tuple(error.shape)}")
    real = (mask < 1).flatten(1).any(dim=1)
    area = error.shape[1] * mask.sum(dim=(1, 2, 3))
    masked = (error * mask).sum(dim=(1, 2, 3)) / area.clamp_min(1.0)
    return torch.where(real, masked, plain)


def diffusion_loss(unet: torch.nn.Module, latents: torch.Tensor, context: torch.Tensor,
                   noise_scheduler, generator: torch.Generator, loss: LossConfig,
                   prediction_type: str, added_cond: dict | None = None, *,
                   rows: slice | None = None, global_count: int | None = None,
                   masks: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    """One batch's loss. All randomness comes from `generator` (a CPU generator, so a run is
    the same on any device and a resume can restore it exactly). The target is the noise for
    epsilon models and v = sqrt(a) * noise - sqrt(1 - a) * latents for v-prediction ones;
    `added_cond` is SDXL's pooled embedding and size ids (Conditioning.unet_kwargs).

    With `rows`, `latents` are those rows of a global batch of `global_count` samples (one
    process of several, trainer.distributed): the noise is drawn for the whole batch and the
    loss is these rows' share of its mean (their sum / global_count), so the ranks' gradients
    add up to the global batch's.

    `masks`: one (1, h, w) latent-grid mask or None per row of `latents` (LatentCache.mask);
    min-SNR weights and the `rows` arithmetic apply to the masked per-sample losses alike."""
    count = global_count if rows is not None else latents.shape[0]
    if rows is not None and rows.stop - rows.start != latents.shape[0]:
        raise ValueError(f"rows {rows.start}:{rows.stop} of a batch of {global_count} do not "
                         f"match {latents.shape[0]} latents")
    noise, timesteps = draw_noise(generator, count, tuple(latents.shape[1:]), loss,
                                  noise_scheduler.config.num_train_timesteps)
    if rows is not None:
        noise, timesteps = noise[rows], timesteps[rows]
    noise, timesteps = noise.to(latents.device, latents.dtype), timesteps.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(noisy, timesteps, context, **(added_cond or {})).sample
    per_sample = per_sample_mse(prediction, target, stack_masks(masks, latents))
    if loss.min_snr_gamma:
        # Min-SNR weighting (Hang et al. 2023): low-noise steps stop dominating the loss.
        ratio = snr(noise_scheduler.alphas_cumprod.to(latents.device), timesteps)
        clipped = torch.clamp(ratio, max=loss.min_snr_gamma)
        if prediction_type == "v_prediction":
            weight = clipped / (ratio + 1)
        else:  # at a zero terminal SNR the epsilon weight 0/0 is taken as 1 (as diffusers does)
            weight = torch.where(ratio == 0, torch.ones_like(ratio), clipped / ratio)
        per_sample = per_sample * weight
    return per_sample.mean() if rows is None else per_sample.sum() / count
