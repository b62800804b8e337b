"""The demo base model's VAE, built rather than trained: an exact colour codec.

Each latent pixel holds the mean colour of its 8x8 block (channels 0-2 = R, G, B in -1..1;
channel 3 is unused); the decoder spreads the colours back out, softening the block edges.
Same architecture and file layout as SD's AutoencoderKL (diffusers loads it as one).

Why not trained: on 2 CPU cores a from-scratch KL autoencoder of this size plateaued at an L1
error of 0.365 (on -1..1 pixels) after 1,100 steps and gave wrong colours: its GroupNorms
remove each picture's mean colour, which is exactly what flat-colour pictures are made of.

How the GroupNorms are kept from doing that: every colour travels as a channel pair (+v, -v),
so each group's mean is 0 at every pixel, and at 1e-5 scale, so the group variance is far
below GroupNorm's eps (1e-6) and the norm becomes a fixed gain of 1/sqrt(eps) = 1000. After
SiLU, silu(a) - silu(-a) = a exactly, which the output convolutions read off. Residual
branches and attention outputs are zero, so every block passes the pairs straight through.
"""

from __future__ import annotations

import torch
from torch import nn

TINY = 1e-5         # colour scale inside the networks; see above
GAIN = 1.0 / 1e-3   # what GroupNorm multiplies it by: 1 / sqrt(eps=1e-6)
COLOURS = 3
LOGVAR = -20.0      # a near-deterministic posterior: a sample is the mean


def _pairs_in(weight: torch.Tensor, scale: float) -> None:
    """A conv from C colour channels into pairs: out 2c = +scale * in c, 2c+1 = -scale * in c."""
    centre = weight.shape[-1] // 2
    for c in range(COLOURS):
        weight[2 * c, c, centre, centre] = scale
        weight[2 * c + 1, c, centre, centre] = -scale


def _pairs_out(weight: torch.Tensor, scale: float) -> None:
    """A conv from pairs back to colours: out c = scale * (in 2c - in 2c+1)."""
    centre = weight.shape[-1] // 2
    for c in range(COLOURS):
        weight[c, 2 * c, centre, centre] = scale
        weight[c, 2 * c + 1, centre, centre] = -scale


def _identity(weight: torch.Tensor, channels: int) -> None:
    centre = weight.shape[-1] // 2
    for c in range(channels):
        weight[c, c, centre, centre] = 1.0


def _smoothing(weight: torch.Tensor, channels: int) -> None:
    """[1,2,1] x [1,2,1] / 16 per channel: after a nearest 2x upsampling, a linear blend."""
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = torch.outer(kernel, kernel) / 16.0
    for c in range(channels):
        weight[c, c] = kernel


@torch.no_grad()
def make_colour_codec(vae: nn.Module, smooth_last: int = 2) -> None:
    """Set every weight of a diffusers AutoencoderKL (8x downsampling) to the codec above.
    `smooth_last`: how many of the decoder's upsamplings (counted from the output) blend
    instead of repeating pixels; earlier ones would grey the border through zero padding."""
    from diffusers.models.resnet import ResnetBlock2D

    pairs = 2 * COLOURS
    for parameter in vae.parameters():
        parameter.zero_()
    for module in vae.modules():
        if isinstance(module, nn.GroupNorm):
            module.weight.fill_(1.0)
        if isinstance(module, ResnetBlock2D) and module.conv_shortcut is not None:
            _identity(module.conv_shortcut.weight, pairs)  # channel change: carry the pairs

    encoder, decoder = vae.encoder, vae.decoder
    _pairs_in(encoder.conv_in.weight, TINY)
    for block in encoder.down_blocks:
        for down in block.downsamplers or []:
            down.conv.weight[range(pairs), range(pairs), :2, :2] = 0.25  # 2x2 average
    latent = vae.config.latent_channels
    _pairs_out(encoder.conv_out.weight, 1.0 / (TINY * GAIN))  # -> mean colour per block
    encoder.conv_out.bias[latent:] = LOGVAR
    _identity(vae.quant_conv.weight, 2 * latent)

    _identity(vae.post_quant_conv.weight, latent)
    _pairs_in(decoder.conv_in.weight, TINY)
    upsamplers = [up for block in decoder.up_blocks for up in (block.upsamplers or [])]
    for index, up in enumerate(upsamplers):
        blend = index >= len(upsamplers) - smooth_last
        (_smoothing if blend else _identity)(up.conv.weight, pairs)
    _pairs_out(decoder.conv_out.weight, 1.0 / (TINY * GAIN))
