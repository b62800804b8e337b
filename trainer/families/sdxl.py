"""SDXL base (and its derivatives: Pony, Illustrious, NoobAI share the layout).

Two text encoders: CLIP ViT-L (768) and OpenCLIP ViT-bigG (1280, with projection). The U-Net
reads both penultimate hidden states concatenated (2048 wide, no final norm), the pooled
projection of the second, and six size ids (original h/w, crop top/left, target h/w). kohya
names the U-Net modules in the original SGM layout (input_blocks / middle_block /
output_blocks), not diffusers' down_blocks. The VAE runs in fp32 (it overflows in fp16).
"""

from __future__ import annotations

from .family import ASSETS_DIR, Family, TextEncoderSpec

FAMILY = Family(
    name="sdxl",
    label="SDXL",
    config_dir=ASSETS_DIR / "sdxl",
    text_encoders=(
        TextEncoderSpec("text_encoder", "lora_te1", "conditioner.embedders.0.transformer.text_model.",
                        hidden_layer=-2, final_norm=False),
        TextEncoderSpec("text_encoder_2", "lora_te2", "conditioner.embedders.1.model.",
                        layout="openclip", with_projection=True, hidden_layer=-2, final_norm=False,
                        pad_token="!"),
    ),
    default_resolution=1024,
    bucket_steps=(32, 64),
    pipeline_class="StableDiffusionXLPipeline",
    unet_names="sgm",
    attention_heads="width64",
    micro_conditioning=True,
    vae_fp32=True,
    implementation="https://github.com/Stability-AI/generative-models",
    versions={"epsilon": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", "1024x1024")},
)
