"""Which Stable Diffusion family a file or folder holds, from its tensors and configs only.

A .safetensors file is classified from its header (key names and shapes); no tensor data is
read. A .ckpt has no separate header, so it is opened with ``torch.load(weights_only=True,
mmap=True)``, which maps rather than reads the data.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelError, name_of
from .key_map import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX

FAMILIES = ("sd1", "sd2", "sd2_v", "sdxl")

FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sd2_v": "SD 2.x (v-prediction)", "sdxl": "SDXL"}

_LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1_a", ".lokr_w1",
                 ".oft_blocks", ".lora.down.", ".lora.up.", ".lora_linear_layer.")


def _refuse(path: Path, what: str) -> ModelError:
    return ModelError(f"{name_of(path)} {what}", path)


def classify_keys(shapes: dict[str, tuple[int, ...]], path: Path, metadata: dict | None = None) -> str:
    """Family of a single-file checkpoint from its {key: shape}; ModelError if not a base model."""
    keys = list(shapes)
    metadata = metadata or {}
    if not keys:
        raise _refuse(path, "holds no tensors; pick a Stable Diffusion checkpoint")

    if (any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys)
            or any(m in k for k in keys for m in _LORA_MARKERS)
            or "ss_network_module" in metadata):
        raise _refuse(path, "looks like a LoRA (lora_unet_ keys), not a base model: "
                            "pick the checkpoint you generate with")
    if (any(k in ("emb_params", "clip_l", "clip_g") or k.startswith("string_to_param") for k in keys)
            and len(keys) <= 4):
        raise _refuse(path, "is a textual-inversion embedding, not a base model: "
                            "pick the checkpoint you generate with")

    has_unet = f"{UNET_PREFIX}input_blocks.0.0.weight" in shapes
    if any(k.startswith("conditioner.embedders.") for k in keys) or f"{UNET_PREFIX}label_emb.0.0.weight" in shapes:
        return "sdxl"
    if any(k.startswith(UNET_PREFIX + p) for k in keys for p in ("joint_blocks.", "double_blocks.", "x_embedder.")) \
            or any(k.startswith(("double_blocks.", "joint_blocks.")) for k in keys):
        raise _refuse(path, "is an SD3 / Flux-style model, not Stable Diffusion 1.x: "
                            "pick an SD 1.x checkpoint")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2_v" if "v_pred" in shapes else "sd2"
    if has_unet:
        cross = next((s for k, s in shapes.items()
                      if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
        if cross is not None and cross[-1] == 2048:
            return "sdxl"
        if cross is not None and cross[-1] == 1024:
            return "sd2_v" if "v_pred" in shapes else "sd2"
        return "sd1"

    # Not a whole checkpoint: say what it is.
    if any(k.startswith(("down_blocks.", "mid_block.")) for k in keys) and "conv_in.weight" in shapes:
        raise _refuse(path, "holds only a diffusers U-Net, not a whole model: pick the model folder "
                            "(the one with model_index.json) or a single-file checkpoint")
    if any(k.startswith(("encoder.down.", "encoder.down_blocks.", VAE_PREFIX)) for k in keys):
        raise _refuse(path, "is a VAE, not a base model: pick the checkpoint you generate with")
    if any(k.startswith(("text_model.", "encoder.layers.", TEXT_PREFIX)) for k in keys):
        raise _refuse(path, "is a text encoder alone, not a base model: pick the checkpoint you generate with")
    raise _refuse(path, "does not look like a Stable Diffusion checkpoint (no model.diffusion_model "
                        "weights): pick an SD 1.x .safetensors model")


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
    nm = name_of(folder)
    unet_cfg_path = folder / "unet" / "config.json"
    if not (folder / "unet").is_dir():
        index = folder / "model_index.json"
        if index.is_file() and "transformer" in read_json(index):
            raise ModelError(f"folder {nm} is an SD3 / Flux-style model (no U-Net); "
                             "pick an SD 1.x model", folder)
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

    if ("XL" in str(index.get("_class_name", "")) or unet_cfg.get("addition_embed_type") == "text_time"
            or unet_cfg.get("cross_attention_dim") == 2048 or (folder / "text_encoder_2").is_dir()):
        return "sdxl"
    if unet_cfg.get("cross_attention_dim") == 1024 or te.get("hidden_size") == 1024:
        return "sd2_v" if sched.get("prediction_type") == "v_prediction" else "sd2"
    return "sd1"


def detect_architecture(path: Path) -> str:
    """"sd1" | "sd2" | "sd2_v" | "sdxl" for a diffusers folder or one checkpoint file.

    Raises ModelError (naming the file) for a LoRA, a VAE, a damaged or truncated file, a file
    that is not a checkpoint, or an unknown architecture. "sd2_v" is reported only when the
    file says so (a ``v_pred`` key, or the folder's scheduler config); otherwise SD 2.x is "sd2".
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return classify_folder(path)
    if not path.exists():
        raise ModelError(f"{name_of(path)} does not exist; check the path", path)
    from .checkpoint_io import open_checkpoint  # torch is imported only for a .ckpt

    source = open_checkpoint(path)
    return classify_keys(source.shapes, path, source.metadata)
