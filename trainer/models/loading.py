"""load_base_model: a diffusers folder or one checkpoint file of any family -> BaseModel, offline.

Both paths build the networks empty (parameters on the meta device, no random init), then fill
every parameter from the file through an explicit key list and refuse the model if a single file
key is left over or a single parameter is left unfilled (a random-initialised layer would train
and export silently wrong). The family (trainer.families) says which text encoders there are and
where their tensors sit. Nothing is fetched from a model hub.

Why not diffusers' ``from_single_file``: its converters drop keys they do not know without a
word and cannot write the single-file layout back (the tiny test models need both directions);
the key table does both, and tests/test_families.py checks it against ``from_single_file``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from trainer.families import Family, TextEncoderSpec, get_family  # noqa: E402
from trainer.families.checkpoint_keys import KeyTable, build_key_table, ignorable_keys  # noqa: E402
from trainer.families.detect import classify_folder, classify_keys, read_json  # noqa: E402
from trainer.families.errors import ModelError, few, name_of  # noqa: E402
from trainer.families.family import CLIP_TOKENIZER_DIR  # noqa: E402
from trainer.paths import special_file_problem  # noqa: E402

from .base_model import BaseModel  # noqa: E402
from .checkpoint_io import TensorSource, open_checkpoint, open_component_weights  # noqa: E402
from trainer.families.config_inference import (  # noqa: E402
    infer_scheduler_config, infer_text_config, infer_unet_config, infer_vae_config, normalize_ldm_keys,
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


def build_text_encoder(config: dict, empty: bool = True, with_projection: bool = False):
    """CLIPTextModel, or CLIPTextModelWithProjection (SDXL's second encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    drop = ("architectures", "transformers_version", "torch_dtype", "dtype")
    cfg = CLIPTextConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_") and k not in drop})
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    make = lambda: cls(cfg)  # noqa: E731
    return _empty(make) if empty else make()


def text_key_prefix(text_encoder) -> str:
    """What the installed CLIPTextModel puts before 'embeddings.': 'text_model.' (transformers 4)
    or '' (transformers 5)."""
    for key in text_encoder.state_dict():
        if key.endswith("embeddings.token_embedding.weight"):
            return key[: -len("embeddings.token_embedding.weight")]
    raise RuntimeError("CLIPTextModel without embeddings.token_embedding: unsupported transformers version")


def fill(module, tensors: dict, *, dtype: torch.dtype, where: Path, part: str, label: str | None = None,
         family: str = "SD 1.x") -> None:
    """Assign exactly the module's state_dict keys; shape-checked; nothing left on meta.

    ``label`` is how ``where`` is named in messages (default: its file name)."""
    nm = label or name_of(where)
    expected = module.state_dict()
    missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or extra:
        bits = ([f"missing {few(missing)}"] if missing else []) + ([f"unexpected {few(extra)}"] if extra else [])
        raise ModelError(f"{nm}: the {part} weights do not match an {family} {part} "
                         f"({'; '.join(bits)}); pick a complete {family} model", where)
    out = {}
    for key, t in tensors.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise ModelError(f"{nm}: {part} weight {key} has shape {tuple(t.shape)}, expected "
                             f"{tuple(expected[key].shape)}; the file is damaged or not {family}", where)
        # Always a fresh copy: tensors memory-mapped from a file sit at arbitrary alignments, and
        # CPU kernels pick different code paths (different rounding) for unaligned weights; a
        # copy is 64-byte aligned, so the same weights give bit-identical outputs from any file.
        out[key] = t.to(dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
    module.load_state_dict(out, strict=True, assign=True)
    left = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.is_meta]
    if left:
        raise ModelError(f"{nm}: {part} weights {few(left)} were not filled; "
                         f"pick a complete {family} model", where)


def _finish(module, device):
    module.to(device)
    module.requires_grad_(False)
    module.eval()
    return module


def _load_tokenizer(folder: Path | None, spec: TextEncoderSpec):
    """The model folder's own tokenizer, else the bundled CLIP BPE (OpenCLIP pads with "!")."""
    from transformers import CLIPTokenizer

    own = folder is not None and folder.is_dir() and any(folder.iterdir())
    src = folder if own else CLIP_TOKENIZER_DIR
    extra = {} if own or spec.pad_token is None else {"pad_token": spec.pad_token}
    try:
        return CLIPTokenizer.from_pretrained(str(src), local_files_only=True, **extra)
    except Exception as e:  # noqa: BLE001 - tokenizer loading raises many kinds of errors
        raise ModelError(f"{name_of(src)}: the CLIP tokenizer cannot be loaded ({e}); "
                         "download the model again", src) from e


def _scheduler(config: dict):
    from diffusers.schedulers import DDPMScheduler

    return DDPMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def _model(family: Family, unet, vae, encoders: dict, tokenizers: dict, sched_cfg: dict,
           source: Path, device) -> BaseModel:
    parts = {c: _finish(m, device) for c, m in encoders.items()}
    parts.update({s.tokenizer_component: tokenizers[s.component] for s in family.text_encoders})
    return BaseModel(unet=_finish(unet, device), vae=_finish(vae, device),
                     noise_scheduler=_scheduler(sched_cfg), family=family.name,
                     prediction_type=sched_cfg.get("prediction_type", "epsilon"), source=source,
                     **parts)


# -- single file -------------------------------------------------------------------------------

def _load_single_file(path: Path, dtype: torch.dtype, device) -> BaseModel:
    source: TensorSource = open_checkpoint(path)
    architecture = classify_keys(source.shapes, path, source.metadata)
    family = get_family(architecture)
    source = source.rename(normalize_ldm_keys(source.shapes))
    shapes = source.shapes
    unet_cfg, vae_cfg = infer_unet_config(shapes, path, family), infer_vae_config(shapes, path, family)
    text_cfgs = {s.component: infer_text_config(shapes, path, family, s) for s in family.text_encoders}

    unet, vae = build_unet(unet_cfg), build_vae(vae_cfg)
    encoders = {s.component: build_text_encoder(text_cfgs[s.component], with_projection=s.with_projection)
                for s in family.text_encoders}
    table = build_key_table(family, unet_cfg, vae_cfg, text_cfgs,
                            {c: text_key_prefix(m) for c, m in encoders.items()})
    skip = ignorable_keys(family, shapes, {c: cfg["num_hidden_layers"] for c, cfg in text_cfgs.items()})
    unexpected = [k for k in shapes if k not in table.by_ldm and k not in skip]
    if unexpected:
        raise ModelError(f"{name_of(path)} has weights an {family.label} model does not have "
                         f"({few(unexpected)}); it may be a merge with extra networks: pick a plain "
                         f"{family.label} checkpoint", path)
    for comp, module in (("unet", unet), ("vae", vae), *encoders.items()):
        tensors, missing, cache = {}, [], {}
        for key in module.state_dict():
            pair = table.by_diffusers.get((comp, key))
            if pair is None or pair.ldm not in shapes:
                missing.append(pair.ldm if pair else key)
                continue
            if pair.ldm not in cache:  # a fused q/k/v tensor is read once for its three parts
                cache = {pair.ldm: source.get(pair.ldm)}
            tensors[key] = KeyTable.tensor_to_diffusers(pair, cache[pair.ldm])
        if missing:
            raise ModelError(f"{name_of(path)} is missing {len(missing)} weights ({few(missing)}); "
                             f"it is incomplete or not {family.label}: pick a complete {family.label} "
                             "checkpoint", path)
        fill(module, tensors, dtype=dtype, where=path, part=comp.replace("_", " "), family=family.label)
        del tensors, cache
        source.close()  # unmap what this part read before the next is copied (SDXL: GBs)
    if family.vae_fp32 and dtype != torch.float32:
        vae.to(torch.float32)
    sched_cfg = infer_scheduler_config(shapes, family)
    if architecture == "sd2_v":
        sched_cfg["prediction_type"] = "v_prediction"
    tokenizers = {s.component: _load_tokenizer(None, s) for s in family.text_encoders}
    return _model(family, unet, vae, encoders, tokenizers, sched_cfg, path, device)


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


_TEXT_MODEL_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")


def _text_names(keys, prefix: str) -> dict[str, str]:
    """Map a saved text encoder's keys (with or without 'text_model.') to the installed naming;
    keys outside the text model (text_projection.weight) keep their name."""
    out = {}
    for k in keys:
        bare = k[len("text_model."):] if k.startswith("text_model.") else k
        if bare.startswith(_TEXT_MODEL_PARTS):
            out[k] = prefix + bare
    return out


def _read_component(folder: Path, sub: str, stem: str, module, rename, *, dtype, part: str,
                    family: Family, ignore=()) -> None:
    source = open_component_weights(folder / sub, stem)
    source = source.rename(rename(source.shapes))
    tensors = {k: source.get(k) for k in source.shapes if k not in ignore}
    # the checkpoint may carry only what the module expects and some harmless extras
    fill(module, tensors, dtype=dtype, where=folder / sub, part=part, label=f"{name_of(folder)}/{sub}",
         family=family.label)


def _kind(value) -> str | None:
    """'number' (bools too), 'text', 'map', or a list's kind; None when unknown or empty."""
    if isinstance(value, (bool, int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, (list, tuple)) and value:
        kinds = {_kind(v) for v in value}
        return kinds.pop() if len(kinds) == 1 else "mixed"
    return None


def _type_problem(config: dict, reference: dict) -> str:
    """The first field whose kind differs from the family's own config (a word where a number
    belongs): named in words instead of the error torch gives deep inside the build. A number
    and a list of numbers are interchangeable in diffusers' configs."""
    for key, expected in reference.items():
        got = config.get(key)
        want, have = _kind(expected), _kind(got)
        if want and have and want != have:
            words = {"number": "number", "text": "word", "map": "map", "mixed": "value"}[want]
            shape = f"a list of {words}s" if isinstance(expected, list) else f"a {words}"
            return f"{key} = {got!r} should be {shape} (like {expected!r})"
    return ""


def _built(builder, config: dict, folder: Path, sub: str, family: Family, **kwargs):
    problem = _type_problem(config, family.config(sub)) if (family.config_dir / sub).is_dir() else ""
    if problem:
        raise ModelError(f"{name_of(folder)}/{sub}/config.json is damaged: {problem}; download "
                         "the model again", folder)
    try:
        return builder(config, **kwargs)
    except Exception as e:  # noqa: BLE001 - diffusers/transformers reject configs in many ways
        raise ModelError(f"{name_of(folder)}/{sub}/config.json describes a network LoRA Studio cannot "
                         f"build ({str(e).splitlines()[0][:120]}); pick an {family.label} model", folder) from e


def _load_folder(folder: Path, dtype: torch.dtype, device) -> BaseModel:
    architecture = classify_folder(folder)
    family = get_family(architecture)
    for sub in ("vae", *(s.component for s in family.text_encoders)):
        if not (folder / sub / "config.json").is_file():
            raise ModelError(f"folder {name_of(folder)} has no {sub}/config.json; pick a complete "
                             "diffusers model folder or one .safetensors file", folder)
    unet = _built(build_unet, read_json(folder / "unet" / "config.json"), folder, "unet", family)
    vae = _built(build_vae, read_json(folder / "vae" / "config.json"), folder, "vae", family)
    _read_component(folder, "unet", "diffusion_pytorch_model", unet, lambda ks: {}, dtype=dtype,
                    part="U-Net", family=family)
    _read_component(folder, "vae", "diffusion_pytorch_model", vae, _vae_legacy_names, dtype=dtype,
                    part="VAE", family=family)
    if family.vae_fp32 and dtype != torch.float32:
        vae.to(torch.float32)
    encoders, tokenizers = {}, {}
    for spec in family.text_encoders:
        comp = spec.component
        te = _built(build_text_encoder, read_json(folder / comp / "config.json"), folder, comp, family,
                    with_projection=spec.with_projection)
        prefix = text_key_prefix(te)
        harmless = {prefix + "embeddings.position_ids"} | (set() if spec.with_projection
                                                            else {"text_projection.weight"})
        _read_component(folder, comp, "model", te, lambda ks, p=prefix: _text_names(ks, p), dtype=dtype,
                        part=comp.replace("_", " "), family=family, ignore=harmless)
        encoders[comp] = te
        tokenizers[comp] = _load_tokenizer(folder / spec.tokenizer_component, spec)

    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched_cfg = read_json(sched_path) if sched_path.is_file() else family.config("scheduler")
    if architecture == "sd2_v":
        sched_cfg["prediction_type"] = "v_prediction"
    return _model(family, unet, vae, encoders, tokenizers, sched_cfg, folder, device)


def load_base_model(path: Path, *, dtype: torch.dtype = torch.float32, device="cpu") -> BaseModel:
    """Load an SD 1.x, SD 2.x or SDXL base model from a diffusers folder or one .safetensors /
    .ckpt file.

    Every parameter is filled from the file (checked), all weights are frozen
    (``requires_grad=False``) and the networks are in eval mode; an SDXL VAE stays fp32. Offline
    only. Raises ModelError with a one-line message for anything it cannot load.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_folder(path, dtype, device)
    if problem := special_file_problem(path):  # a link loop is no missing file
        raise ModelError(problem, path)
    if not path.exists():
        raise ModelError(f"{name_of(path)} does not exist; check the path", path)
    return _load_single_file(path, dtype, device)
