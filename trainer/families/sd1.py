"""SD 1.x: one CLIP ViT-L text encoder, 768-wide context, 512 px, U-Net names as in diffusers."""

from __future__ import annotations

from .family import ASSETS_DIR, Family, TextEncoderSpec

FAMILY = Family(
    name="sd1",
    label="SD 1.x",
    config_dir=ASSETS_DIR / "sd15",
    text_encoders=(
        TextEncoderSpec("text_encoder", "lora_te", "cond_stage_model.transformer.text_model."),
    ),
    default_resolution=512,
    bucket_steps=(64,),
    pipeline_class="StableDiffusionPipeline",
    unet_names="diffusers",
    attention_heads="fixed8",
    versions={"epsilon": ("sd_v1", "stable-diffusion-v1/lora", "512x512")},
)
