"""kohya module names of a family's LoRA layers (docs/lora-format.md, "Names per family").

Torch-free: the trainer names what it trains with these, and the window lists the same names.
"""

from __future__ import annotations

from .checkpoint_keys import unet_sgm_paths
from .family import Family

# What a text-encoder LoRA adapts in each CLIP layer, with the config keys of each layer's
# (in, out) features: the trainer matches these, the window counts them.
TEXT_ENCODER_LAYERS: dict[str, tuple[str, str]] = {
    "self_attn.q_proj": ("hidden_size", "hidden_size"),
    "self_attn.k_proj": ("hidden_size", "hidden_size"),
    "self_attn.v_proj": ("hidden_size", "hidden_size"),
    "self_attn.out_proj": ("hidden_size", "hidden_size"),
    "mlp.fc1": ("hidden_size", "intermediate_size"),
    "mlp.fc2": ("intermediate_size", "hidden_size"),
}


def kohya_name(prefix: str, module_path: str) -> str:
    """`lora_unet_` + path with dots as underscores. Text encoder paths are written in the
    transformers 4 layout (`text_model.encoder...`) whatever version is installed (transformers
    5's CLIPTextModel has no `text_model` level; CLIPTextModelWithProjection still has one)."""
    if prefix.startswith("lora_te") and not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return f"{prefix}_{module_path.replace('.', '_')}"


def unet_kohya_names(family: Family, unet_config: dict, module_paths: list[str]) -> dict[str, str]:
    """diffusers module path -> kohya name for U-Net modules, in the family's naming (SDXL: the
    original SGM path, `lora_unet_input_blocks_4_1_...`)."""
    if family.unet_names == "sgm":
        sgm = unet_sgm_paths(dict(unet_config))
        return {path: kohya_name("lora_unet", sgm[path]) for path in module_paths}
    return {path: kohya_name("lora_unet", path) for path in module_paths}
