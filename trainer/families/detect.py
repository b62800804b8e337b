"""Which Stable Diffusion family a checkpoint or folder holds, from key names, shapes and configs.

Torch-free: the window asks the same functions as the loader. A refusal names what the file is
(a LoRA, a VAE, an SDXL refiner, an inpainting model, SD3 / Flux) in one line, with what to pick.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint_keys import UNET_PREFIX, VAE_PREFIX
from .errors import ModelError, name_of

ARCHITECTURE_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sd2_v": "SD 2.x (v-prediction)",
                      "sdxl": "SDXL"}
PICK = "pick an SD 1.x, SD 2.x or SDXL checkpoint"

_LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1_a", ".lokr_w1",
                 ".oft_blocks", ".lora.down.", ".lora.up.", ".lora_linear_layer.")
_SDXL_TE2 = "conditioner.embedders.1.model."
_SD2_TE = "cond_stage_model.model."


def _refuse(path: Path, what: str) -> ModelError:
    return ModelError(f"{name_of(path)} {what}", path)


def _cross_width(shapes: dict[str, tuple[int, ...]]) -> int | None:
    for k, s in shapes.items():
        if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight"):
            return s[-1]
    return None


def looks_like_lora(keys, metadata: dict) -> bool:
    """Whether a safetensors file's keys or metadata are those of a LoRA (any naming or kind)."""
    return (any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys)
            or any(m in k for k in keys for m in _LORA_MARKERS)
            or "ss_network_module" in metadata)


def _refuse_non_models(shapes: dict[str, tuple[int, ...]], path: Path, metadata: dict) -> None:
    keys = list(shapes)
    if not keys:
        raise _refuse(path, f"holds no tensors; {PICK}")
    if looks_like_lora(keys, metadata):
        raise _refuse(path, "looks like a LoRA (lora_unet_ keys), not a base model: "
                            "pick the checkpoint you generate with")
    if (any(k in ("emb_params", "clip_l", "clip_g") or k.startswith("string_to_param") for k in keys)
            and len(keys) <= 4):
        raise _refuse(path, "is a textual-inversion embedding, not a base model: "
                            "pick the checkpoint you generate with")
    if any(k.startswith(UNET_PREFIX + p) for k in keys for p in ("joint_blocks.", "double_blocks.", "x_embedder.")) \
            or any(k.startswith(("double_blocks.", "joint_blocks.", "transformer_blocks.0.attn.add_q_proj"))
                   for k in keys):
        raise _refuse(path, f"is an SD3 / Flux-style model (a diffusion transformer, no U-Net): {PICK}")


def classify_keys(shapes: dict[str, tuple[int, ...]], path: Path, metadata: dict | None = None) -> str:
    """Architecture of a single-file checkpoint from its {key: shape}; ModelError naming what
    the file is when it is not a base model LoRA Studio trains on."""
    metadata = metadata or {}
    _refuse_non_models(shapes, path, metadata)
    keys = list(shapes)
    conv_in = shapes.get(f"{UNET_PREFIX}input_blocks.0.0.weight")
    family = None
    if any(k.startswith("conditioner.embedders.") for k in keys) or f"{UNET_PREFIX}label_emb.0.0.weight" in shapes:
        if not any(k.startswith(_SDXL_TE2) for k in keys):
            if any(k.startswith("conditioner.embedders.0.model.") for k in keys) or _cross_width(shapes) == 1280:
                raise _refuse(path, "is an SDXL refiner (it only finishes images the base model "
                                    "started); pick the SDXL base model or a fine-tune of it")
        family = "sdxl"
    elif any(k.startswith(_SD2_TE) for k in keys):
        family = "sd2"
    elif conv_in is not None:
        cross = _cross_width(shapes)
        family = {2048: "sdxl", 1024: "sd2"}.get(cross or 0, "sd1")
    if family is not None:
        if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
            raise _refuse(path, f"is an {ARCHITECTURE_NAMES[family]} inpainting or instruct model "
                                f"({conv_in[1]} U-Net input channels); {PICK} made for text-to-image")
        if family == "sd2" and "v_pred" in shapes:
            return "sd2_v"
        return family

    # Not a whole checkpoint: say what it is.
    if any(k.startswith(("down_blocks.", "mid_block.")) for k in keys) and "conv_in.weight" in shapes:
        raise _refuse(path, "holds only a diffusers U-Net, not a whole model: pick the model folder "
                            "(the one with model_index.json) or a single-file checkpoint")
    if any(k.startswith(("encoder.down.", "encoder.down_blocks.", VAE_PREFIX)) for k in keys):
        raise _refuse(path, "is a VAE, not a base model: pick the checkpoint you generate with")
    if any(k.startswith(("text_model.", "encoder.layers.", "cond_stage_model.")) for k in keys):
        raise _refuse(path, "is a text encoder alone, not a base model: pick the checkpoint you generate with")
    raise _refuse(path, "does not look like a Stable Diffusion checkpoint (no model.diffusion_model "
                        f"weights): {PICK}")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{name_of(path.parent)}/{path.name} cannot be read ({e}); "
                         "download the model again", path) from e
    if not isinstance(data, dict):
        raise ModelError(f"{name_of(path.parent)}/{path.name} is not a config file; "
                         "download the model again", path)
    return data


def classify_folder(folder: Path) -> str:
    """Architecture of a diffusers folder from its model_index.json and configs."""
    nm = name_of(folder)
    unet_cfg_path = folder / "unet" / "config.json"
    if not (folder / "unet").is_dir():
        index = folder / "model_index.json"
        if index.is_file() and "transformer" in read_json(index):
            raise ModelError(f"folder {nm} is an SD3 / Flux-style model (a diffusion transformer, "
                             f"no U-Net); {PICK}", folder)
        singles = sorted(p.name for p in folder.glob("*.safetensors"))
        hint = f" (to use {singles[0]}, pick that file itself)" if singles else ""
        raise ModelError(f"folder {nm} has no unet/ subfolder; pick a diffusers model folder "
                         f"or one .safetensors file{hint}", folder)
    if not unet_cfg_path.is_file():
        raise ModelError(f"folder {nm} has no unet/config.json; download the model again", folder)
    unet_cfg = read_json(unet_cfg_path)
    index = read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched = read_json(sched_path) if sched_path.is_file() else {}
    te_path = folder / "text_encoder" / "config.json"
    te = read_json(te_path) if te_path.is_file() else {}

    if (folder / "text_encoder_2").is_dir() and not (folder / "text_encoder").is_dir() \
            or "Img2Img" in str(index.get("_class_name", "")) and index.get("requires_aesthetics_score"):
        raise ModelError(f"folder {nm} is an SDXL refiner (it only finishes images the base model "
                         "started); pick the SDXL base model or a fine-tune of it", folder)
    if ("XL" in str(index.get("_class_name", "")) or unet_cfg.get("addition_embed_type") == "text_time"
            or unet_cfg.get("cross_attention_dim") == 2048 or (folder / "text_encoder_2").is_dir()):
        family = "sdxl"
    elif (unet_cfg.get("cross_attention_dim") == 1024 or te.get("hidden_size") == 1024
          or te.get("hidden_act") == "gelu"):  # OpenCLIP's activation; OpenAI CLIP: quick_gelu
        family = "sd2"
    else:
        family = "sd1"
    channels = int(unet_cfg.get("in_channels", 4))
    if channels != 4:
        raise ModelError(f"folder {nm} is an {ARCHITECTURE_NAMES[family]} inpainting or instruct "
                         f"model ({channels} U-Net input channels); {PICK} made for text-to-image",
                         folder)
    if family == "sd2" and sched.get("prediction_type") == "v_prediction":
        return "sd2_v"
    if family == "sdxl" and sched.get("prediction_type") == "v_prediction":
        return "sdxl"  # v-prediction SDXL derivatives: the prediction type is read separately
    return family
