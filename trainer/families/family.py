"""What a model family is: the facts that differ between SD 1.x, SD 2.x and SDXL, without torch.

A `Family` is data plus a few small rules. The loader, the conditioning, the LoRA naming, the
metadata, the preview and verify pipelines and the window all ask it instead of assuming SD 1.x,
so a new family is one new module that builds one of these (docs/engine.md, "Model families").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
CLIP_TOKENIZER_DIR = ASSETS_DIR / "clip_tokenizer"


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family and how each place names it.

    component      diffusers' name ("text_encoder", "text_encoder_2"), also the folder name
    kohya_prefix   LoRA key prefix ("lora_te", "lora_te1", "lora_te2")
    ldm_prefix     where its tensors sit in a single-file checkpoint
    layout         "hf" (CLIPTextModel keys) or "openclip" (resblocks with fused q/k/v)
    with_projection  a CLIPTextModelWithProjection whose projection gives the pooled embedding
    hidden_layer   which hidden state conditions the U-Net: -1 the last, -2 the penultimate
    final_norm     whether that hidden state goes through the final layer norm
    pad_token      the tokenizer's padding token (OpenCLIP pads with "!")
    dropped_layers OpenCLIP layers in the file that the model does not have (SD 2.x drops the
                   last of 24: its output is the penultimate layer through the final norm)
    """

    component: str
    kohya_prefix: str
    ldm_prefix: str
    layout: str = "hf"
    with_projection: bool = False
    hidden_layer: int = -1
    final_norm: bool = True
    pad_token: str | None = None
    dropped_layers: int = 0

    @property
    def tokenizer_component(self) -> str:
        return self.component.replace("text_encoder", "tokenizer")


@dataclass(frozen=True)
class Family:
    """A Stable Diffusion family. ``name`` is the family ("sd1", "sd2", "sdxl")."""

    name: str
    label: str                              # how the window and messages name it
    config_dir: Path                        # bundled diffusers configs (assets/<name>)
    text_encoders: tuple[TextEncoderSpec, ...]
    default_resolution: int                 # native training / preview size
    bucket_steps: tuple[int, ...]           # allowed bucket_reso_steps
    pipeline_class: str                     # diffusers pipeline for previews and verify
    unet_names: str                         # kohya U-Net names: "diffusers" or "sgm"
    attention_heads: str                    # "fixed8" (SD 1.x) or "width64" (heads = width / 64)
    micro_conditioning: bool = False        # SDXL: pooled embedding + six size/crop ids
    vae_fp32: bool = False                  # the VAE overflows in fp16 (SDXL)
    implementation: str = "diffusers"       # modelspec.implementation
    # (ss_base_model_version, modelspec.architecture, modelspec.resolution) per prediction type
    versions: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    ss_v2: bool = False

    # -- configs ------------------------------------------------------------------------------
    def config(self, component: str, *, bookkeeping: bool = False) -> dict:
        """A bundled config file ("unet", "vae", "text_encoder", "scheduler", "model_index")
        as a dict; without diffusers' bookkeeping keys ("_class_name", ...) unless asked."""
        name = "scheduler_config.json" if component == "scheduler" else "config.json"
        path = self.config_dir / component / name
        if component == "model_index":
            path = self.config_dir / "model_index.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if bookkeeping else {k: v for k, v in data.items() if not k.startswith("_")}

    def text_encoder(self, component: str) -> TextEncoderSpec:
        for spec in self.text_encoders:
            if spec.component == component:
                return spec
        raise KeyError(f"{self.label} has no {component}")

    def heads_for(self, channels: list[int]) -> int | list[int]:
        """diffusers' `attention_head_dim` (really the number of heads) for these widths."""
        if self.attention_heads == "fixed8":
            return 8
        return [max(1, c // 64) for c in channels]

    # -- metadata -----------------------------------------------------------------------------
    def version_for(self, prediction_type: str) -> tuple[str, str, str]:
        key = "v" if prediction_type in ("v", "v_prediction") else "epsilon"
        return self.versions.get(key) or self.versions["epsilon"]

    def base_metadata(self, prediction_type: str) -> dict[str, str]:
        """The keys A1111 groups LoRAs by, and modelspec's architecture (docs/lora-format.md)."""
        version, architecture, resolution = self.version_for(prediction_type)
        return {
            "ss_base_model_version": version,
            "ss_v2": str(self.ss_v2),
            "modelspec.sai_model_spec": "1.0.1",
            "modelspec.architecture": architecture,
            "modelspec.implementation": self.implementation,
            "modelspec.resolution": resolution,
            "modelspec.prediction_type": "v" if prediction_type in ("v", "v_prediction")
            else "epsilon",
        }

    def display_label(self, prediction_type: str) -> str:
        return self.label + (" (v-prediction)" if prediction_type in ("v", "v_prediction") else "")
