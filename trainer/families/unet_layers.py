"""Every U-Net layer a network can adapt, with its shape, from the U-Net's config alone.

Torch-free, so the window can count what the trainer will train before anything is loaded.
The channel arithmetic is diffusers' `UNet2DConditionModel` construction (down blocks widen,
up blocks take the skip connections' channels too), checked against the real SD 1.5, SD 2.x
and SDXL modules on the meta device by tests/test_network_groups.py.
"""

from __future__ import annotations

from typing import NamedTuple

from trainer.network_groups import ATTENTION_KINDS, PROJECTIONS

CONV3 = (3, 3)


class LayerShape(NamedTuple):
    """One adaptable layer: its diffusers path (or kohya name, for text encoders), the input
    and output features (channels, for a conv) and the kernel ((1, 1) for a Linear layer)."""

    name: str
    fan_in: int
    fan_out: int
    kernel: tuple[int, int] = (1, 1)


def _per_block(value: object, count: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value or 1)] * count


def _transformer(prefix: str, width: int, depth: int, cross: int) -> list[LayerShape]:
    """A Transformer2DModel of `depth` blocks: proj_in, the attention projections and the
    GEGLU feed-forward (inner width 4 x, its first projection doubled for the gate)."""
    layers = [LayerShape(f"{prefix}.proj_in", width, width)]
    for t in range(depth):
        block = f"{prefix}.transformer_blocks.{t}"
        for attn in ATTENTION_KINDS:
            for proj in PROJECTIONS:
                source = cross if attn == "attn2" and proj in ("to_k", "to_v") else width
                layers.append(LayerShape(f"{block}.{attn}.{proj}", source, width))
        layers += [LayerShape(f"{block}.ff.net.0.proj", width, 8 * width),
                   LayerShape(f"{block}.ff.net.2", 4 * width, width)]
    layers.append(LayerShape(f"{prefix}.proj_out", width, width))
    return layers


def _resnet(prefix: str, fan_in: int, fan_out: int, time: int) -> list[LayerShape]:
    layers = [LayerShape(f"{prefix}.conv1", fan_in, fan_out, CONV3),
              LayerShape(f"{prefix}.time_emb_proj", time, fan_out),
              LayerShape(f"{prefix}.conv2", fan_out, fan_out, CONV3)]
    if fan_in != fan_out:  # diffusers adds the 1 x 1 shortcut only where the widths differ
        layers.append(LayerShape(f"{prefix}.conv_shortcut", fan_in, fan_out))
    return layers


def unet_layers(unet: dict) -> list[LayerShape]:
    """Every layer of every group (trainer.network_groups) in a U-Net of this config."""
    widths = list(unet.get("block_out_channels") or [])
    if not widths:
        return []
    downs = list(unet.get("down_block_types") or [])
    ups = list(unet.get("up_block_types") or [])
    cross = unet.get("cross_attention_dim") or 768
    if isinstance(cross, (list, tuple)):
        cross = cross[0]
    time = unet.get("time_embedding_dim") or widths[0] * 4
    depth = _per_block(unet.get("transformer_layers_per_block", 1), len(downs))
    per_down = _per_block(unet.get("layers_per_block", 2), len(downs))
    layers: list[LayerShape] = []

    out = widths[0]
    for i, kind in enumerate(downs):
        fan_in, out = out, widths[i]
        for j in range(per_down[i]):
            layers += _resnet(f"down_blocks.{i}.resnets.{j}", fan_in if j == 0 else out, out, time)
            if "CrossAttn" in kind:
                layers += _transformer(f"down_blocks.{i}.attentions.{j}", out, depth[i], cross)
        if i < len(downs) - 1:
            layers.append(LayerShape(f"down_blocks.{i}.downsamplers.0.conv", out, out, CONV3))

    middle = str(unet.get("mid_block_type", "UNetMidBlock2DCrossAttn"))
    if "CrossAttn" in middle:
        layers += _resnet("mid_block.resnets.0", widths[-1], widths[-1], time)
        layers += _transformer("mid_block.attentions.0", widths[-1], depth[-1], cross)
        layers += _resnet("mid_block.resnets.1", widths[-1], widths[-1], time)

    rwidths, rdepth, rlayers = widths[::-1], depth[::-1], per_down[::-1]
    out = rwidths[0]
    for i, kind in enumerate(ups):
        previous, out = out, rwidths[i]
        skip_in = rwidths[min(i + 1, len(rwidths) - 1)]
        count = rlayers[i] + 1
        for j in range(count):
            skip = skip_in if j == count - 1 else out
            fan_in = (previous if j == 0 else out) + skip
            layers += _resnet(f"up_blocks.{i}.resnets.{j}", fan_in, out, time)
            if "CrossAttn" in kind:
                layers += _transformer(f"up_blocks.{i}.attentions.{j}", out, rdepth[i], cross)
        if i < len(ups) - 1:
            layers.append(LayerShape(f"up_blocks.{i}.upsamplers.0.conv", out, out, CONV3))
    return layers
