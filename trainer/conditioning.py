"""What the U-Net receives besides the noisy latents, for every family.

The family's text-encoder specs say it all: which hidden state of which encoder, whether it goes
through the final layer norm, which encoder's projection is the pooled embedding. SD 1.x: CLIP-L's
last hidden state (clip_skip 2: the penultimate, re-normalised, as A1111 and kohya do). SD 2.x: the
23-layer OpenCLIP-H encoder's last hidden state (the penultimate of the original 24, through the
final norm). SDXL: the penultimate hidden states of CLIP-L and OpenCLIP-bigG concatenated (no final
norm), bigG's pooled projection, and six size ids per image (`size_ids`), as kohya and diffusers
condition it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """Text conditioning of a batch: context [B, 77, D], and SDXL's pooled embedding [B, P]."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device) -> Conditioning:
        return Conditioning(self.context.to(device),
                            None if self.pooled is None else self.pooled.to(device))

    def unet_kwargs(self, size_ids: torch.Tensor | None) -> dict:
        """Keyword arguments of UNet2DConditionModel.forward beyond (sample, timestep, context)."""
        if self.pooled is None:
            return {}
        if size_ids is None:
            raise ValueError("an SDXL U-Net needs the six size ids of every image")
        return {"added_cond_kwargs": {"text_embeds": self.pooled,
                                      "time_ids": size_ids.to(self.pooled.device, self.pooled.dtype)}}

    @staticmethod
    def stack(items: list[Conditioning]) -> Conditioning:
        pooled = [c.pooled for c in items]
        return Conditioning(torch.stack([c.context for c in items]),
                            None if pooled[0] is None else torch.stack(pooled))

    def split(self) -> list[Conditioning]:
        """One Conditioning per sample (for the text cache)."""
        pooled = [None] * len(self.context) if self.pooled is None else list(self.pooled)
        return [Conditioning(c, p) for c, p in zip(self.context, pooled)]


def encode_prompts(base, captions: list[str], clip_skip: int = 1) -> Conditioning:
    """Tokenise and encode `captions` with each of the base model's text encoders."""
    hidden, pooled = [], None
    for spec in base.spec.text_encoders:
        tokenizer, encoder = getattr(base, spec.tokenizer_component), getattr(base, spec.component)
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        ids = ids.to(next(encoder.parameters()).device)
        layer = spec.hidden_layer - (clip_skip - 1)  # clip_skip counts from the family's layer
        if layer == -1 and spec.final_norm and not spec.with_projection:
            hidden.append(encoder(ids).last_hidden_state)  # already through the final norm
            continue
        out = encoder(ids, output_hidden_states=True)
        state = out.hidden_states[layer]
        if spec.final_norm:
            # transformers 5 dropped CLIPTextModel's `text_model` level; both have final_layer_norm.
            state = getattr(encoder, "text_model", encoder).final_layer_norm(state)
        hidden.append(state)
        if spec.with_projection:
            pooled = out.text_embeds
    return Conditioning(torch.cat(hidden, dim=-1), pooled)


def size_ids(original: tuple[int, int], crop_top_left: tuple[int, int],
             target: tuple[int, int]) -> torch.Tensor:
    """SDXL's six micro-conditioning numbers: original (h, w), crop (top, left), target (h, w).
    `original` and `target` are given as (width, height), the way images and buckets are."""
    (ow, oh), (top, left), (tw, th) = original, crop_top_left, target
    return torch.tensor([oh, ow, top, left, th, tw], dtype=torch.float32)
