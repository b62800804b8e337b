"""What a base model is, read from its config files or safetensors header - never with torch.

A diffusers folder tells its architecture in `model_index.json` and `unet/config.json`; one
`.safetensors` file tells it in the tensor names of its header (8-byte little-endian length +
JSON). The LoRA module list and parameter count follow from the U-Net config alone: each
cross-attention block holds transformer blocks (layers_per_block of them going down,
layers_per_block + 1 going up, one in the middle), each with attn1 / attn2 and four projections.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from trainer.config import NetworkConfig

SD15_UNET_CONFIG = Path(__file__).resolve().parent.parent / "assets" / "sd15" / "unet" / "config.json"
PROJECTION_NAMES = ("to_q", "to_k", "to_v", "to_out.0")
MAX_HEADER = 100 * 1024 * 1024


@dataclass
class ModelInfo:
    """The facts the window shows about a base model."""

    architecture: str = ""          # "SD 1.x" | "SD 2.x" | "SDXL" | ""
    message: str = ""               # a plain sentence for the artist
    usable: bool = False
    unet_config: dict = field(default_factory=dict)


def _architecture_from_unet(config: dict) -> str:
    cross = config.get("cross_attention_dim")
    if config.get("addition_embed_type") == "text_time" or cross == 2048:
        return "SDXL"
    if cross == 1024:
        return "SD 2.x"
    if cross == 768 or cross is not None:
        return "SD 1.x"
    return ""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (tensor name -> dtype/shape/offsets)."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError("the file is too short to be a .safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER:
            raise ValueError("the file's header is not a safetensors header")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("the file's header is not a safetensors header")
    return header


def _architecture_from_keys(keys: list[str]) -> str:
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "SDXL"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "SD 2.x"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "SD 1.x"
    if any(k.startswith("lora_unet_") or k.startswith("lora_te") for k in keys):
        return "LoRA"
    return ""


def inspect_model(path: Path | None) -> ModelInfo:
    """Architecture and U-Net config of a diffusers folder or a single checkpoint file."""
    if path is None or str(path) == "":
        return ModelInfo(message="Pick a base model: a diffusers folder or one .safetensors file.")
    path = Path(path)
    if not path.exists():
        return ModelInfo(message=f"Not found: {path}")
    if path.is_dir():
        unet = _read_json(path / "unet" / "config.json")
        if not (path / "model_index.json").exists() or not unet:
            return ModelInfo(message="This folder is not a diffusers model (no model_index.json "
                                     "and unet/config.json).")
        arch = _architecture_from_unet(unet)
        if not any((path / "unet").glob("diffusion_pytorch_model*")):
            return ModelInfo(arch, f"This folder has the {arch or 'model'} settings but no U-Net "
                                   "weights (unet/diffusion_pytorch_model.safetensors is "
                                   "missing).", False, unet)
        return _verdict(arch, unet, "diffusers folder")
    if path.suffix.lower() == ".ckpt":
        return ModelInfo(architecture="", usable=True, unet_config={},
                         message="A .ckpt file: its architecture is checked when training starts.")
    if path.suffix.lower() != ".safetensors":
        return ModelInfo(message="Use a diffusers folder or a .safetensors / .ckpt file.")
    try:
        keys = list(read_safetensors_header(path))
    except (OSError, ValueError) as error:
        return ModelInfo(message=f"This file cannot be read as .safetensors ({error}).")
    arch = _architecture_from_keys(keys)
    if arch == "LoRA":
        return ModelInfo(architecture="LoRA", message="This is a LoRA file, not a base model.")
    unet = _read_json(SD15_UNET_CONFIG) if arch == "SD 1.x" else {}
    return _verdict(arch, unet, "checkpoint file")


def _verdict(arch: str, unet: dict, what: str) -> ModelInfo:
    if arch == "SD 1.x":
        return ModelInfo(arch, f"Stable Diffusion 1.x ({what}) - ready to train.", True, unet)
    if arch in ("SD 2.x", "SDXL"):
        return ModelInfo(arch, f"{arch} ({what}) is recognised but not supported yet; "
                               "use an SD 1.x model.", False, unet)
    return ModelInfo("", f"Could not tell which Stable Diffusion this {what} is.", False, unet)


def _per_block(value: object, count: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value or 1)] * count


def attention_modules(unet: dict) -> list[tuple[str, int, int]]:
    """(module name, in features, out features) of every U-Net attention projection."""
    widths = list(unet.get("block_out_channels") or [])
    downs = list(unet.get("down_block_types") or [])
    ups = list(unet.get("up_block_types") or [])
    layers = unet.get("layers_per_block", 2)
    cross = unet.get("cross_attention_dim") or 768
    if isinstance(cross, (list, tuple)):
        cross = cross[0]
    depth = _per_block(unet.get("transformer_layers_per_block", 1), len(downs))
    per_down = _per_block(layers, len(downs))
    modules: list[tuple[str, int, int]] = []

    def add(prefix: str, width: int, transformers: int) -> None:
        for t in range(transformers):
            for attn in ("attn1", "attn2"):
                for proj in PROJECTION_NAMES:
                    source = cross if attn == "attn2" and proj in ("to_k", "to_v") else width
                    modules.append((f"{prefix}.transformer_blocks.{t}.{attn}.{proj}", source, width))

    for i, kind in enumerate(downs):
        if "CrossAttn" in kind:
            for j in range(per_down[i]):
                add(f"down_blocks.{i}.attentions.{j}", widths[i], depth[i])
    if "CrossAttn" in str(unet.get("mid_block_type", "UNetMidBlock2DCrossAttn")) and widths:
        add("mid_block.attentions.0", widths[-1], depth[-1])
    rwidths, rdepth, rlayers = widths[::-1], depth[::-1], per_down[::-1]
    for i, kind in enumerate(ups):
        if "CrossAttn" in kind:
            for j in range(rlayers[i] + 1):
                add(f"up_blocks.{i}.attentions.{j}", rwidths[i], rdepth[i])
    return modules


def _block_of(name: str) -> tuple[str, str]:
    if name.startswith("mid_block"):
        return "mid", "0"
    kind, index = name.split(".")[:2]
    return kind.removesuffix("_blocks"), index


def selected_modules(unet: dict, network: NetworkConfig) -> list[tuple[str, int, int]]:
    """The projections the network settings pick (the trainer asks the same
    `NetworkConfig.selects`, so the count shown is the count trained)."""
    out = []
    for name, fan_in, fan_out in attention_modules(unet):
        _, attn, proj = name.split(".transformer_blocks.")[1].split(".", 2)
        if network.selects(*_block_of(name), attn, proj):
            out.append((name, fan_in, fan_out))
    return out


def lora_parameter_count(modules: list[tuple[str, int, int]], rank: int) -> int:
    """Trainable parameters: rank x (in + out) per adapted module (down and up matrices)."""
    return sum(rank * (fan_in + fan_out) for _, fan_in, fan_out in modules)
