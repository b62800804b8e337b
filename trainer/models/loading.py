"""load_base_model: a diffusers folder or one SD 1.x checkpoint file -> BaseModel, offline.

Both paths build the three networks empty (parameters on the meta device, no random init),
then fill every parameter from the file through an explicit key list and refuse the model if
a single file key is left over or a single parameter is left unfilled. Nothing is fetched
from a model hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from . import defaults  # noqa: E402
from .base_model import BaseModel  # noqa: E402
from .checkpoint_io import TensorSource, open_checkpoint, open_component_weights  # noqa: E402
from .detect import FAMILY_NAMES, classify_folder, classify_keys, read_json  # noqa: E402
from .errors import ModelError, few, name_of  # noqa: E402
from .key_map import KeyTable, build_key_table  # noqa: E402
from .ldm_config import (  # noqa: E402
    infer_scheduler_config, infer_text_config, infer_unet_config, infer_vae_config, is_ignorable,
    normalize_ldm_keys,
)


# -- building empty networks -------------------------------------------------------------------

def _empty(factory):
    """Build a module with parameters on the meta device (buffers stay real: CLIP's position_ids)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def build_unet(config: dict, empty: bool = True):
    from diffusers.models import UNet2DConditionModel

    make = lambda: UNet2DConditionModel.from_config(config)  # noqa: E731
    return _empty(make) if empty else make()


def build_vae(config: dict, empty: bool = True):
    from diffusers.models import AutoencoderKL

    make = lambda: AutoencoderKL.from_config(config)  # noqa: E731
    return _empty(make) if empty else make()


def build_text_encoder(config: dict, empty: bool = True):
    from transformers import CLIPTextConfig, CLIPTextModel

    drop = ("architectures", "transformers_version", "torch_dtype", "dtype")
    cfg = CLIPTextConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_") and k not in drop})
    make = lambda: CLIPTextModel(cfg)  # noqa: E731
    return _empty(make) if empty else make()


def text_key_prefix(text_encoder) -> str:
    """What the installed CLIPTextModel puts before 'embeddings.': 'text_model.' (transformers 4)
    or '' (transformers 5)."""
    for key in text_encoder.state_dict():
        if key.endswith("embeddings.token_embedding.weight"):
            return key[: -len("embeddings.token_embedding.weight")]
    raise RuntimeError("CLIPTextModel without embeddings.token_embedding: unsupported transformers version")


def fill(module, tensors: dict, *, dtype: torch.dtype, where: Path, part: str, label: str | None = None) -> None:
    """Assign exactly the module's state_dict keys; shape-checked; nothing left on meta.

    ``label`` is how ``where`` is named in messages (default: its file name)."""
    nm = label or name_of(where)
    expected = module.state_dict()
    missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or extra:
        bits = ([f"missing {few(missing)}"] if missing else []) + ([f"unexpected {few(extra)}"] if extra else [])
        raise ModelError(f"{nm}: the {part} weights do not match an SD 1.x {part} "
                         f"({'; '.join(bits)}); pick a complete SD 1.x model", where)
    out = {}
    for key, t in tensors.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise ModelError(f"{nm}: {part} weight {key} has shape {tuple(t.shape)}, expected "
                             f"{tuple(expected[key].shape)}; the file is damaged or not SD 1.x", where)
        # Always a fresh copy: tensors memory-mapped from a file sit at arbitrary alignments, and
        # CPU kernels pick different code paths (different rounding) for unaligned weights; a
        # copy is 64-byte aligned, so the same weights give bit-identical outputs from any file.
        out[key] = t.to(dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
    module.load_state_dict(out, strict=True, assign=True)
    left = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.is_meta]
    if left:
        raise ModelError(f"{nm}: {part} weights {few(left)} were not filled; "
                         "pick a complete SD 1.x model", where)


def _finish(module, device):
    module.to(device)
    module.requires_grad_(False)
    module.eval()
    return module


def _load_tokenizer(folder: Path | None):
    from transformers import CLIPTokenizer

    src = folder if folder is not None and folder.is_dir() and any(folder.iterdir()) else defaults.CLIP_TOKENIZER_DIR
    try:
        return CLIPTokenizer.from_pretrained(str(src), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - tokenizer loading raises many kinds of errors
        raise ModelError(f"{name_of(src)}: the CLIP tokenizer cannot be loaded ({e}); "
                         "download the model again", src) from e


def _scheduler(config: dict):
    from diffusers.schedulers import DDPMScheduler

    return DDPMScheduler.from_config(defaults.strip_private(config))


def _refuse_family(family: str, path: Path) -> None:
    if family != "sd1":
        kind = "folder " if path.is_dir() else ""
        raise ModelError(f"{kind}{name_of(path)} is an {FAMILY_NAMES[family]} model; LoRA Studio supports "
                         "SD 1.x models for now: pick an SD 1.x model", path)


def _refuse_inpainting(unet_in_channels: int, path: Path) -> None:
    if unet_in_channels != 4:
        raise ModelError(f"{name_of(path)} is an inpainting or instruct model ({unet_in_channels} U-Net "
                         "input channels); pick a regular SD 1.x model", path)


# -- single file -------------------------------------------------------------------------------

def _load_single_file(path: Path, dtype: torch.dtype, device) -> BaseModel:
    source: TensorSource = open_checkpoint(path)
    family = classify_keys(source.shapes, path, source.metadata)
    _refuse_family(family, path)
    source = source.rename(normalize_ldm_keys(source.shapes))
    shapes = source.shapes
    unet_cfg = infer_unet_config(shapes, path)
    _refuse_inpainting(unet_cfg["in_channels"], path)
    vae_cfg, text_cfg = infer_vae_config(shapes, path), infer_text_config(shapes, path)

    unet, vae, te = build_unet(unet_cfg), build_vae(vae_cfg), build_text_encoder(text_cfg)
    table = build_key_table(unet_cfg, vae_cfg, text_cfg, text_key_prefix(te))
    unexpected = [k for k in shapes if k not in table.by_ldm and not is_ignorable(k)]
    if unexpected:
        raise ModelError(f"{name_of(path)} has weights an SD 1.x model does not have ({few(unexpected)}); "
                         "it may be a merge with extra networks: pick a plain SD 1.x checkpoint", path)
    for comp, module in (("unet", unet), ("vae", vae), ("text_encoder", te)):
        tensors = {}
        missing = []
        for key in module.state_dict():
            pair = table.by_diffusers.get((comp, key))
            if pair is None or pair.ldm not in shapes:
                missing.append(pair.ldm if pair else key)
                continue
            tensors[key] = KeyTable.tensor_to_diffusers(pair, source.get(pair.ldm))
        if missing:
            raise ModelError(f"{name_of(path)} is missing {len(missing)} weights ({few(missing)}); "
                             "it is incomplete or not SD 1.x: pick a complete SD 1.x checkpoint", path)
        fill(module, tensors, dtype=dtype, where=path, part=comp.replace("_", " "))
    sched_cfg = infer_scheduler_config(shapes)
    return BaseModel(
        unet=_finish(unet, device), vae=_finish(vae, device), text_encoder=_finish(te, device),
        tokenizer=_load_tokenizer(None), noise_scheduler=_scheduler(sched_cfg), family=family,
        prediction_type=sched_cfg.get("prediction_type", "epsilon"), source=path,
    )


# -- diffusers folder --------------------------------------------------------------------------

_LEGACY_VAE_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _vae_legacy_names(keys) -> dict[str, str]:
    """diffusers < 0.14 named the VAE mid-block attention query/key/value/proj_attn."""
    out = {}
    for k in keys:
        parts = k.split(".")
        if len(parts) >= 2 and ".mid_block.attentions." in k and parts[-2] in _LEGACY_VAE_ATTN:
            out[k] = ".".join(parts[:-2] + [_LEGACY_VAE_ATTN[parts[-2]], parts[-1]])
    return out


def _text_names(keys, prefix: str) -> dict[str, str]:
    """Map a saved text encoder's keys (with or without 'text_model.') to the installed naming."""
    out = {}
    for k in keys:
        bare = k[len("text_model."):] if k.startswith("text_model.") else k
        out[k] = prefix + bare
    return out


def _read_component(folder: Path, sub: str, stem: str, module, rename, *, dtype, part: str,
                    ignore=()) -> None:
    source = open_component_weights(folder / sub, stem)
    source = source.rename(rename(source.shapes))
    tensors = {k: source.get(k) for k in source.shapes if k not in ignore}
    # the checkpoint may carry only what the module expects and some harmless extras
    fill(module, tensors, dtype=dtype, where=folder / sub, part=part, label=f"{name_of(folder)}/{sub}")


def _built(builder, config: dict, folder: Path, sub: str):
    try:
        return builder(config)
    except Exception as e:  # noqa: BLE001 - diffusers/transformers reject configs in many ways
        raise ModelError(f"{name_of(folder)}/{sub}/config.json describes a network LoRA Studio cannot "
                         f"build ({str(e).splitlines()[0][:120]}); pick an SD 1.x model", folder) from e


def _load_folder(folder: Path, dtype: torch.dtype, device) -> BaseModel:
    family = classify_folder(folder)
    _refuse_family(family, folder)
    for sub in ("vae", "text_encoder"):
        if not (folder / sub / "config.json").is_file():
            raise ModelError(f"folder {name_of(folder)} has no {sub}/config.json; pick a complete "
                             "diffusers model folder or one .safetensors file", folder)
    unet_cfg = read_json(folder / "unet" / "config.json")
    _refuse_inpainting(int(unet_cfg.get("in_channels", 4)), folder)
    unet = _built(build_unet, unet_cfg, folder, "unet")
    vae = _built(build_vae, read_json(folder / "vae" / "config.json"), folder, "vae")
    te = _built(build_text_encoder, read_json(folder / "text_encoder" / "config.json"), folder, "text_encoder")
    prefix = text_key_prefix(te)

    _read_component(folder, "unet", "diffusion_pytorch_model", unet, lambda ks: {}, dtype=dtype, part="U-Net")
    _read_component(folder, "vae", "diffusion_pytorch_model", vae, _vae_legacy_names, dtype=dtype, part="VAE")
    harmless = {prefix + "embeddings.position_ids", "text_projection.weight"}
    _read_component(folder, "text_encoder", "model", te, lambda ks: _text_names(ks, prefix), dtype=dtype,
                    part="text encoder", ignore=harmless)

    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched_cfg = read_json(sched_path) if sched_path.is_file() else defaults.sd15_scheduler_config()
    return BaseModel(
        unet=_finish(unet, device), vae=_finish(vae, device), text_encoder=_finish(te, device),
        tokenizer=_load_tokenizer(folder / "tokenizer"), noise_scheduler=_scheduler(sched_cfg), family=family,
        prediction_type=sched_cfg.get("prediction_type", "epsilon"), source=folder,
    )


def load_base_model(path: Path, *, dtype: torch.dtype = torch.float32, device="cpu") -> BaseModel:
    """Load an SD 1.x base model from a diffusers folder or one .safetensors / .ckpt file.

    Every parameter is filled from the file (checked), all weights are frozen
    (``requires_grad=False``) and the networks are in eval mode. Offline only. Raises
    ModelError with a one-line message for anything it cannot load.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_folder(path, dtype, device)
    if not path.exists():
        raise ModelError(f"{name_of(path)} does not exist; check the path", path)
    return _load_single_file(path, dtype, device)
