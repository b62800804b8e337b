"""SD 2.x: OpenCLIP ViT-H as a 23-layer CLIPTextModel, 1024-wide context, Linear proj_in/out.

512 px epsilon (2.0/2.1-base) and 768 px v-prediction (2.0/2.1-768). The single-file text
encoder is OpenCLIP's: 24 resblocks with fused q/k/v, of which SD 2 uses the penultimate layer
through the final norm, so the 24th is in the file and not in the model.
"""

from __future__ import annotations

from .family import ASSETS_DIR, Family, TextEncoderSpec

FAMILY = Family(
    name="sd2",
    label="SD 2.x",
    config_dir=ASSETS_DIR / "sd2",
    text_encoders=(
        TextEncoderSpec("text_encoder", "lora_te", "cond_stage_model.model.", layout="openclip",
                        pad_token="!", dropped_layers=1),
    ),
    default_resolution=512,
    bucket_steps=(64,),
    pipeline_class="StableDiffusionPipeline",
    unet_names="diffusers",
    attention_heads="width64",
    versions={"epsilon": ("sd_v2", "stable-diffusion-v2-512/lora", "512x512"),
              "v": ("sd_v2_v", "stable-diffusion-v2-768-v/lora", "768x768")},
    ss_v2=True,
)
