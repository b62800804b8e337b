"""diffusers / transformers configs for a single-file checkpoint, from its tensor shapes.

Widths, depths, attention placement, context width, the SDXL size-embedding width and each text
encoder's size are read from the shapes, so the real layouts and the tiny test models go through
the same code. What the shapes cannot tell (attention heads, GroupNorm groups, activation, noise
schedule, VAE scaling factor) comes from the family's bundled configs in assets/.
"""

from __future__ import annotations

import re
from pathlib import Path

from .family import Family, TextEncoderSpec
from .checkpoint_keys import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
from .errors import ModelError, name_of

CLIP_HEAD_WIDTH = 64  # text encoder heads = hidden_size // 64 in every CLIP that SD uses


def normalize_ldm_keys(keys) -> dict[str, str]:
    """old -> new names for variant spellings of the SD 1.x layout.

    Very early SD 1.x checkpoints (transformers < 4.17) have no ``text_model.`` level under
    ``cond_stage_model.transformer.``.
    """
    old_te = "cond_stage_model.transformer."
    out = {}
    for k in keys:
        if k.startswith(old_te) and not k.startswith(TEXT_PREFIX):
            out[k] = TEXT_PREFIX + k[len(old_te):]
    return out


def _indices(shapes, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in shapes if (m := pat.match(k))})


def _need(shapes, key: str, path: Path, part: str, family: Family) -> tuple[int, ...]:
    if key not in shapes:
        raise ModelError(f"{name_of(path)} has no {part} weights ({key} is missing); "
                         f"pick a complete {family.label} checkpoint", path)
    return shapes[key]


def infer_unet_config(shapes, path: Path, family: Family) -> dict:
    P = UNET_PREFIX
    conv_in = _need(shapes, P + "input_blocks.0.0.weight", path, "U-Net", family)
    blocks = _indices(shapes, P + "input_blocks.")
    ops = [i for i in blocks if P + f"input_blocks.{i}.0.op.weight" in shapes]
    if ops:
        lpb, n = ops[0] - 1, len(ops) + 1
    else:
        lpb, n = len(blocks) - 1, 1
    if lpb < 1 or len(blocks) != n * (lpb + 1):
        raise ModelError(f"{name_of(path)} has a U-Net layout LoRA Studio does not know "
                         f"({len(blocks)} input blocks); pick an {family.label} checkpoint", path)
    first = [1 + i * (lpb + 1) for i in range(n)]
    channels = [_need(shapes, P + f"input_blocks.{k}.0.out_layers.3.weight", path, "U-Net", family)[0]
                for k in first]
    has_attn = [P + f"input_blocks.{k}.1.proj_in.weight" in shapes for k in first]
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn]
    up = ["CrossAttnUpBlock2D" if P + f"output_blocks.{i * (lpb + 1)}.1.proj_in.weight" in shapes
          else "UpBlock2D" for i in range(n)]
    to_k = next((k for k in shapes if k.startswith(P) and k.endswith("attn2.to_k.weight")), None)
    if to_k is None:
        raise ModelError(f"{name_of(path)} has a U-Net without cross-attention; "
                         f"pick an {family.label} checkpoint", path)
    # transformer depth per level (SDXL: 2 and 10), 1 where a level has no attention
    depth = [len(_indices(shapes, P + f"input_blocks.{k}.1.transformer_blocks.")) if a else 1
             for k, a in zip(first, has_attn)]
    block = to_k[: to_k.index(".transformer_blocks.")]
    cfg = family.config("unet")
    cfg.update(
        in_channels=conv_in[1],
        out_channels=_need(shapes, P + "out.2.weight", path, "U-Net", family)[0],
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=lpb,
        cross_attention_dim=shapes[to_k][1],
        attention_head_dim=family.heads_for(channels),
        use_linear_projection=len(shapes[block + ".proj_in.weight"]) == 2,
        transformer_layers_per_block=depth if len(set(depth)) > 1 else depth[0],
    )
    if P + "middle_block.1.proj_in.weight" not in shapes:
        cfg["mid_block_type"] = "UNetMidBlock2D"
    label = shapes.get(P + "label_emb.0.0.weight")
    if label is not None:  # SDXL: pooled text embedding + 6 sinusoidal size ids of width T
        pooled = next((s[1] for k, s in shapes.items() if k.endswith("model.text_projection")), None)
        cfg.update(addition_embed_type="text_time", projection_class_embeddings_input_dim=label[1])
        if pooled is not None and (label[1] - pooled) % 6 == 0 and label[1] > pooled:
            cfg["addition_time_embed_dim"] = (label[1] - pooled) // 6
    else:
        for key in ("addition_embed_type", "addition_time_embed_dim",
                    "projection_class_embeddings_input_dim"):
            cfg.pop(key, None)
    return cfg


def infer_vae_config(shapes, path: Path, family: Family) -> dict:
    P = VAE_PREFIX
    _need(shapes, P + "encoder.conv_in.weight", path, "VAE", family)
    levels = _indices(shapes, P + "encoder.down.")
    lpb = len(_indices(shapes, P + "encoder.down.0.block."))
    channels = [_need(shapes, P + f"encoder.down.{i}.block.0.conv1.weight", path, "VAE", family)[0]
                for i in levels]
    cfg = family.config("vae")
    n = len(channels)
    cfg.update(
        in_channels=shapes[P + "encoder.conv_in.weight"][1],
        out_channels=_need(shapes, P + "decoder.conv_out.weight", path, "VAE", family)[0],
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        layers_per_block=lpb,
        latent_channels=_need(shapes, P + "post_quant_conv.weight", path, "VAE", family)[0],
    )
    return cfg


def infer_text_config(shapes, path: Path, family: Family, spec: TextEncoderSpec) -> dict:
    """One text encoder's CLIPTextConfig fields (OpenCLIP layouts converted to CLIP names)."""
    P = spec.ldm_prefix
    part = "text encoder" if len(family.text_encoders) == 1 else f"{spec.component.replace('_', ' ')}"
    cfg = family.config(spec.component)
    if spec.layout == "openclip":
        vocab, hidden = _need(shapes, P + "token_embedding.weight", path, part, family)
        positions = _need(shapes, P + "positional_embedding", path, part, family)[0]
        layers = len(_indices(shapes, P + "transformer.resblocks.")) - spec.dropped_layers
        inner = _need(shapes, P + "transformer.resblocks.0.mlp.c_fc.weight", path, part, family)[0]
        if spec.with_projection:
            cfg["projection_dim"] = _need(shapes, P + "text_projection", path, part, family)[1]
    else:
        vocab, hidden = _need(shapes, P + "embeddings.token_embedding.weight", path, part, family)
        positions = _need(shapes, P + "embeddings.position_embedding.weight", path, part, family)[0]
        layers = len(_indices(shapes, P + "encoder.layers."))
        inner = _need(shapes, P + "encoder.layers.0.mlp.fc1.weight", path, part, family)[0]
    if layers < 1:
        raise ModelError(f"{name_of(path)} has a {part} without layers; "
                         f"pick a complete {family.label} checkpoint", path)
    cfg.update(vocab_size=vocab, hidden_size=hidden, max_position_embeddings=positions,
               num_hidden_layers=layers, intermediate_size=inner,
               num_attention_heads=max(1, hidden // CLIP_HEAD_WIDTH))
    return cfg


def infer_scheduler_config(shapes, family: Family) -> dict:
    cfg = family.config("scheduler")
    if "v_pred" in shapes:  # the marker ComfyUI and kohya write into v-prediction models
        cfg["prediction_type"] = "v_prediction"
    return cfg
