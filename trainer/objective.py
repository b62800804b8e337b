"""The diffusion training objective: text conditioning, noising, and the weighted MSE.

Kept apart from the loop so the step maths can be read (and benchmarked) on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.config import LossConfig


def encode_text(tokenizer, text_encoder: torch.nn.Module, captions: list[str],
                clip_skip: int = 1) -> torch.Tensor:
    """CLIP hidden states [B, 77, D]; clip_skip = 2 takes the penultimate layer, re-normalised
    (what A1111 and kohya do)."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    ids = ids.to(next(text_encoder.parameters()).device)
    if clip_skip == 1:
        return text_encoder(ids).last_hidden_state
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    # transformers 5 dropped the `text_model` level; both layouts have final_layer_norm.
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    alpha_bar = alphas_cumprod[timesteps]
    return alpha_bar / (1.0 - alpha_bar)


def diffusion_loss(unet: torch.nn.Module, latents: torch.Tensor, context: torch.Tensor,
                   noise_scheduler, generator: torch.Generator, loss: LossConfig,
                   prediction_type: str) -> torch.Tensor:
    """One batch's loss. All randomness comes from `generator` (a CPU generator, so a run is
    the same on any device and a resume can restore it exactly)."""
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
    prediction = unet(noisy, timesteps, context).sample
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(
        dim=(1, 2, 3))
    if loss.min_snr_gamma:
        # Min-SNR weighting (Hang et al. 2023): low-noise steps stop dominating the loss.
        ratio = snr(noise_scheduler.alphas_cumprod.to(latents.device), timesteps)
        clipped = torch.clamp(ratio, max=loss.min_snr_gamma)
        weight = clipped / (ratio + 1) if prediction_type == "v_prediction" else clipped / ratio
        per_sample = per_sample * weight
    return per_sample.mean()
