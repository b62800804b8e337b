"""The diffusion training objective: noising, the prediction target and the weighted MSE.

Kept apart from the loop so the step maths can be read (and benchmarked) on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.config import LossConfig


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    alpha_bar = alphas_cumprod[timesteps]
    return alpha_bar / (1.0 - alpha_bar)


def diffusion_loss(unet: torch.nn.Module, latents: torch.Tensor, context: torch.Tensor,
                   noise_scheduler, generator: torch.Generator, loss: LossConfig,
                   prediction_type: str, added_cond: dict | None = None) -> torch.Tensor:
    """One batch's loss. All randomness comes from `generator` (a CPU generator, so a run is
    the same on any device and a resume can restore it exactly). The target is the noise for
    epsilon models and v = sqrt(a) * noise - sqrt(1 - a) * latents for v-prediction ones;
    `added_cond` is SDXL's pooled embedding and size ids (Conditioning.unet_kwargs)."""
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator)
    if loss.noise_offset:
        # Offset noise: lets the model learn overall brightness (very dark / light images).
        noise = noise + loss.noise_offset * torch.randn((batch, latents.shape[1], 1, 1),
                                                        generator=generator)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,),
                              generator=generator)
    noise, timesteps = noise.to(latents.device, latents.dtype), timesteps.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(noisy, timesteps, context, **(added_cond or {})).sample
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(
        dim=(1, 2, 3))
    if loss.min_snr_gamma:
        # Min-SNR weighting (Hang et al. 2023): low-noise steps stop dominating the loss.
        ratio = snr(noise_scheduler.alphas_cumprod.to(latents.device), timesteps)
        clipped = torch.clamp(ratio, max=loss.min_snr_gamma)
        if prediction_type == "v_prediction":
            weight = clipped / (ratio + 1)
        else:  # at a zero terminal SNR the epsilon weight 0/0 is taken as 1 (as diffusers does)
            weight = torch.where(ratio == 0, torch.ones_like(ratio), clipped / ratio)
        per_sample = per_sample * weight
    return per_sample.mean()
