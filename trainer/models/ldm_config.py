"""diffusers / transformers configs for a single-file SD 1.x checkpoint, from its tensor shapes.

Widths, depths, attention placement, context width and the text encoder's size are read from
the shapes, so the real SD 1.5 layout and the tiny test model go through the same code. What
the shapes cannot tell (attention heads, GroupNorm groups, activation, noise schedule) comes
from the SD 1.5 configs shipped in assets/sd15.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import defaults
from .errors import ModelError, name_of
from .key_map import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX

# Keys a checkpoint may carry that no model parameter corresponds to.
_IGNORED_EXACT = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights", "v_pred", "ztsnr",
    TEXT_PREFIX + "embeddings.position_ids",
}
_IGNORED_PREFIXES = ("model_ema.", "first_stage_model.loss.")


def is_ignorable(key: str) -> bool:
    return key in _IGNORED_EXACT or key.startswith(_IGNORED_PREFIXES)


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


def _need(shapes, key: str, path: Path, part: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ModelError(f"{name_of(path)} has no {part} weights ({key} is missing); "
                         "pick a complete SD 1.x checkpoint", path)
    return shapes[key]


def infer_unet_config(shapes, path: Path) -> dict:
    P = UNET_PREFIX
    conv_in = _need(shapes, P + "input_blocks.0.0.weight", path, "U-Net")
    blocks = _indices(shapes, P + "input_blocks.")
    ops = [i for i in blocks if P + f"input_blocks.{i}.0.op.weight" in shapes]
    if ops:
        lpb, n = ops[0] - 1, len(ops) + 1
    else:
        lpb, n = len(blocks) - 1, 1
    if lpb < 1 or len(blocks) != n * (lpb + 1):
        raise ModelError(f"{name_of(path)} has a U-Net layout LoRA Studio does not know "
                         f"({len(blocks)} input blocks); pick an SD 1.x checkpoint", path)
    first = [1 + i * (lpb + 1) for i in range(n)]
    channels = [_need(shapes, P + f"input_blocks.{k}.0.out_layers.3.weight", path, "U-Net")[0] for k in first]
    down = ["CrossAttnDownBlock2D" if P + f"input_blocks.{k}.1.proj_in.weight" in shapes else "DownBlock2D"
            for k in first]
    up = ["CrossAttnUpBlock2D" if P + f"output_blocks.{i * (lpb + 1)}.1.proj_in.weight" in shapes else "UpBlock2D"
          for i in range(n)]
    to_k = next((k for k in shapes if k.startswith(P) and k.endswith("attn2.to_k.weight")), None)
    if to_k is None:
        raise ModelError(f"{name_of(path)} has a U-Net without cross-attention; pick an SD 1.x checkpoint", path)
    block = to_k[: to_k.index(".transformer_blocks.")]
    depth = len(_indices(shapes, block + ".transformer_blocks."))
    cfg = defaults.strip_private(defaults.sd15_unet_config())
    cfg.update(
        in_channels=conv_in[1],
        out_channels=_need(shapes, P + "out.2.weight", path, "U-Net")[0],
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=lpb,
        cross_attention_dim=shapes[to_k][1],
        attention_head_dim=defaults.SD1_ATTENTION_HEAD_DIM,
        norm_num_groups=defaults.SD1_NORM_GROUPS,
        use_linear_projection=len(shapes[block + ".proj_in.weight"]) == 2,
        transformer_layers_per_block=depth,
    )
    if P + "middle_block.1.proj_in.weight" not in shapes:
        cfg["mid_block_type"] = "UNetMidBlock2D"
    return cfg


def infer_vae_config(shapes, path: Path) -> dict:
    P = VAE_PREFIX
    _need(shapes, P + "encoder.conv_in.weight", path, "VAE")
    levels = _indices(shapes, P + "encoder.down.")
    lpb = len(_indices(shapes, P + "encoder.down.0.block."))
    channels = [_need(shapes, P + f"encoder.down.{i}.block.0.conv1.weight", path, "VAE")[0] for i in levels]
    cfg = defaults.strip_private(defaults.sd15_vae_config())
    n = len(channels)
    cfg.update(
        in_channels=shapes[P + "encoder.conv_in.weight"][1],
        out_channels=_need(shapes, P + "decoder.conv_out.weight", path, "VAE")[0],
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        layers_per_block=lpb,
        latent_channels=_need(shapes, P + "post_quant_conv.weight", path, "VAE")[0],
        norm_num_groups=defaults.SD1_NORM_GROUPS,
    )
    return cfg


def infer_text_config(shapes, path: Path) -> dict:
    P = TEXT_PREFIX
    vocab, hidden = _need(shapes, P + "embeddings.token_embedding.weight", path, "text encoder")
    cfg = defaults.strip_private(defaults.sd15_text_config())
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        max_position_embeddings=_need(shapes, P + "embeddings.position_embedding.weight", path, "text encoder")[0],
        num_hidden_layers=len(_indices(shapes, P + "encoder.layers.")),
        intermediate_size=_need(shapes, P + "encoder.layers.0.mlp.fc1.weight", path, "text encoder")[0],
        num_attention_heads=max(1, hidden // defaults.CLIP_HEAD_WIDTH),
        hidden_act="quick_gelu",
    )
    return cfg


def infer_scheduler_config(shapes) -> dict:
    cfg = defaults.strip_private(defaults.sd15_scheduler_config())
    if "v_pred" in shapes:  # the marker ComfyUI and kohya write into v-prediction SD 1.x models
        cfg["prediction_type"] = "v_prediction"
    return cfg
