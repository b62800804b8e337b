"""Writing the product: one kohya-format `.safetensors` LoRA with its metadata and hashes.

See docs/lora-format.md. Tensors are `lora_unet_*` / `lora_te_*` (SDXL: `lora_te1_*`, `lora_te2_*`)
modules with `lora_down`, `lora_up` and the real `alpha`, all in the save precision; every
metadata value is a string.
`sshs_model_hash` is the sha256 of the tensor-data section, computed by serialising the final
tensors once before the real header is written (the data section does not depend on metadata).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save, save_file

from trainer.atomic import atomic_write
from trainer.paths import special_file_problem

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
THUMBNAIL_SIDE = 256


class ExportError(ValueError):
    """An export that cannot be done; the message is one line saying why and what to do."""


def tensor_data_hashes(tensors: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of the tensors as safetensors will write them."""
    blob = save(tensors)
    header_len = int.from_bytes(blob[:8], "little")
    data = blob[8 + header_len:]
    model_hash = hashlib.sha256(data).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def refuse_foreign_target(path: Path) -> None:
    """ExportError unless `path` is free or already a LoRA file: an export never replaces a
    base model, a folder or any other file it did not write as a LoRA."""
    from trainer.families.detect import looks_like_lora
    from trainer.families.safetensors_header import SafetensorsError, parse_header

    if not os.path.lexists(path):
        return
    if not path.is_file():
        raise ExportError(f"{path} exists and is not a file; pick another name for the LoRA")
    try:
        header = parse_header(path)
    except SafetensorsError:
        raise ExportError(f"{path.name} already exists and is not a .safetensors LoRA file; LoRA "
                          "Studio does not replace it: pick another output name") from None
    metadata = header.metadata if isinstance(header.metadata, dict) else {}
    if not looks_like_lora(header.tensors, metadata):
        what = ("a base model" if any(k.startswith(("model.diffusion_model.", "conditioner.",
                                                      "cond_stage_model.")) for k in header.tensors)
                else "not a LoRA")
        raise ExportError(f"{path.name} already exists and is {what} ({len(header.tensors):,} "
                          "tensors); LoRA Studio never replaces it: pick another output name")


def write_lora_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                    save_precision: str = "fp16") -> Path:
    """Cast, hash and write atomically (temp file + fsync + rename): an existing LoRA file at
    `path` is replaced whole or not at all; any other existing file is refused (ExportError)."""
    path = Path(path)
    refuse_foreign_target(path)
    dtype = SAVE_DTYPES[save_precision]
    final = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
    model_hash, legacy_hash = tensor_data_hashes(final)
    header = {k: str(v) for k, v in metadata.items()}
    header.update({"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash})
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # from a killed export
        stale.unlink(missing_ok=True)
    try:
        atomic_write(path, lambda tmp: save_file(final, tmp, metadata=header))
    except OSError as error:
        if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            kept = "the earlier file there is kept" if path.exists() else "nothing was written"
            raise OSError(error.errno, f"the disk is full: {path.name} could not be written in "
                          f"{path.parent} ({kept}). Free some space and export again",
                          str(path)) from error
        raise
    return path


def cover_thumbnail(image: Path, max_side: int = THUMBNAIL_SIDE) -> str:
    """`modelspec.thumbnail`: the image as a JPEG data URL, at most `max_side` px on its long
    side (transparent pixels flattened on white)."""
    import base64
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    if problem := special_file_problem(image):  # Image.open on a FIFO would wait forever
        raise ExportError(f"cover image: {problem}")
    try:
        with warnings.catch_warnings():
            # past PIL's pixel limit it only warns; a cover that big is a decompression bomb
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(image) as opened:
                picture = ImageOps.exif_transpose(opened)
                picture.load()
    except FileNotFoundError:
        raise ExportError(f"cover image {image} does not exist") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ExportError(f"cover image {Path(image).name} is too large to open safely (over "
                          f"{Image.MAX_IMAGE_PIXELS:,} pixels); use a smaller picture") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ExportError(f"cover image {Path(image).name} cannot be read as an image "
                          f"({type(error).__name__}); use a PNG, JPEG or WebP file") from None
    if picture.mode in ("RGBA", "LA", "P"):
        picture = picture.convert("RGBA")
        flat = Image.new("RGB", picture.size, (255, 255, 255))
        flat.paste(picture, mask=picture.getchannel("A"))
        picture = flat
    else:
        picture = picture.convert("RGB")
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=88, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class CheckpointExport:
    """What `export_checkpoint` wrote, and the base model to verify it against."""

    path: Path
    base_model: Path | None       # model.path of the run's config.toml, when it still exists
    base_model_named: str | None  # as written in config.toml (even when it no longer exists)


def _checkpoint_config(folder: Path) -> dict:
    import tomllib

    path = folder / "config.toml"
    if not path.exists():
        return {}
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ExportError(f"{path} cannot be read ({error})") from None


def _fallback_metadata(tensors: dict[str, torch.Tensor], config: dict) -> dict[str, str]:
    """Minimal kohya metadata for a checkpoint saved without metadata.json."""
    from trainer.metadata import base_model_metadata
    from trainer.models import ModelError, detect_architecture
    from trainer.network_kinds import KINDS, LORA

    from collections import Counter

    kind = KINDS.get(str((config.get("network") or {}).get("kind", "lora")), LORA)
    shapes: dict[str, dict[str, tuple]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        shapes.setdefault(name, {})[part] = tuple(tensor.shape)
    # the most common rank and alpha: a LoCon's convs may have their own, smaller ones
    ranks = Counter(rank for parts in shapes.values() if all(p in parts for p in kind.required)
                    and (rank := kind.file_rank(parts)) is not None)
    alphas = Counter(float(t) for k, t in tensors.items() if k.endswith(".alpha"))
    model = (config.get("model") or {}).get("path")
    if not model or not Path(model).exists():
        raise ExportError("the checkpoint has no metadata.json and its base model is not at "
                          f"{model or '(unset)'}; export it from a run made by this version")
    try:
        family = detect_architecture(Path(model))
    except ModelError as error:
        raise ExportError(f"the checkpoint has no metadata.json and its base model cannot be "
                          f"read: {error}") from None
    prediction = (config.get("model") or {}).get("prediction_type", "auto")
    meta = {"ss_network_module": kind.network_module,
            "ss_network_dim": str(ranks.most_common(1)[0][0]) if ranks else "0",
            "ss_network_alpha": f"{alphas.most_common(1)[0][0]:g}" if alphas else "0"}
    meta.update(base_model_metadata(family, "v_prediction" if family == "sd2_v"
                                    else prediction))
    return meta


def export_checkpoint(checkpoint: Path, out: Path, *, precision: str | None = None,
                      user: dict[str, object] | None = None, cover: Path | None = None,
                      hide_folder_names: bool | None = None) -> CheckpointExport:
    """Turn a checkpoint folder (or a run folder: its newest checkpoint) into the LoRA file.

    `user` holds MetadataConfig fields to set (title, author, description, trigger_phrase,
    tags, license); `precision` defaults to the run's output.save_precision (fp16)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from trainer.checkpoint import CheckpointError, resolve_checkpoint
    from trainer.metadata import apply_user_metadata

    checkpoint = Path(checkpoint)
    if problem := special_file_problem(checkpoint):  # a link loop is no missing folder
        raise ExportError(problem)
    if not checkpoint.exists():
        raise ExportError(f"{checkpoint} does not exist; pass a run folder or a "
                          "checkpoints/step-NNNNNN folder")
    try:
        folder = resolve_checkpoint(checkpoint)
    except CheckpointError as error:
        raise ExportError(str(error).replace("to resume from", "to export")) from None
    try:
        tensors = load_file(folder / "lora.safetensors")
    except (OSError, SafetensorError) as error:
        raise ExportError(f"{folder / 'lora.safetensors'} cannot be read ({error})") from None
    config = _checkpoint_config(folder)
    meta_path = folder / "metadata.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
        except (OSError, ValueError) as error:
            raise ExportError(f"{meta_path} cannot be read ({error})") from None
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ExportError(f"{meta_path} is not a map of strings; the checkpoint is damaged")
    else:
        meta = _fallback_metadata(tensors, config)
    precision = precision or (config.get("output") or {}).get("save_precision") or "fp16"
    if precision not in SAVE_DTYPES:
        raise ExportError(f"precision {precision!r} is not one of {', '.join(SAVE_DTYPES)}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ExportError(f"{out.name}: the LoRA file must end in .safetensors")
    meta = dict(meta)
    meta["ss_output_name"] = out.stem
    meta = apply_user_metadata(meta, user or {},
                               thumbnail=cover_thumbnail(cover) if cover else None,
                               hide_folder_names=bool(hide_folder_names))
    meta.pop("sshs_model_hash", None)
    meta.pop("sshs_legacy_hash", None)
    write_lora_file(out, tensors, meta, precision)
    named = (config.get("model") or {}).get("path")
    base = Path(named) if named and Path(named).exists() else None
    return CheckpointExport(out, base, named)
