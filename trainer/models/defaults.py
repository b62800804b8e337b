"""Where the shipped SD 1.5 configs and CLIP tokenizer live, and reading them (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
SD15_DIR = ASSETS_DIR / "sd15"
CLIP_TOKENIZER_DIR = ASSETS_DIR / "clip_tokenizer"

# What tensor shapes cannot tell, for the SD 1.x family.
SD1_ATTENTION_HEAD_DIM = 8  # diffusers' (misnamed) number of heads in SD 1.x
SD1_NORM_GROUPS = 32
CLIP_HEAD_WIDTH = 64  # text encoder heads = hidden_size // 64


def _read(rel: str) -> dict:
    return json.loads((SD15_DIR / rel).read_text(encoding="utf-8"))


def sd15_unet_config() -> dict:
    return _read("unet/config.json")


def sd15_vae_config() -> dict:
    return _read("vae/config.json")


def sd15_text_config() -> dict:
    return _read("text_encoder/config.json")


def sd15_scheduler_config() -> dict:
    return _read("scheduler/scheduler_config.json")


def sd15_model_index() -> dict:
    return _read("model_index.json")


def strip_private(config: dict) -> dict:
    """A config without the bookkeeping keys ('_class_name', '_diffusers_version', ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}
