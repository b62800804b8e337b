"""kohya sd-scripts dataset TOML: `[general]`, `[[datasets]]`, `[[datasets.subsets]]`.

Lower levels override higher ones (general < datasets < subsets); what none of them sets comes
from `config.dataset` (so `enable_bucket` defaults to on here, where kohya defaults it to off).
`image_dir` is relative to the TOML file. In TOML mode kohya reads neither repeats nor class
tokens from `N_name` folder names, and neither do we: use `num_repeats` and `class_tokens`.

Masked loss: `conditioning_data_dir` is the subset's mask folder (relative to the TOML, as
`image_dir`), and `alpha_mask = true` turns masked loss on for that subset (as kohya applies
alpha masks without --masked_loss). `dataset.masked_loss` (kohya's --masked_loss) turns it on
for every subset; `alpha_mask = false` does not turn it off there. Without either switch a
`conditioning_data_dir` is noted and unused (kohya would read it as a ControlNet dataset).

LoRA Studio trains one resolution and batch size per job, so every dataset in the file must
agree on the dataset-level keys. Keys kohya knows but we do not use are accepted with a note;
keys that would change the captions or need another kind of dataset are refused.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from trainer.config import MAX_REPEATS, DatasetConfig
from trainer.config_io import ConfigError, read_toml
from trainer.data.subsets import (DatasetError, DatasetSettings, ResolvedDataset, Subset,
                                  mask_folder_of, subset_defaults, unique_names)
from trainer.paths import resolved

DATASET_KEYS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps", "bucket_no_upscale", "validation_split", "validation_seed")
SUBSET_SHARED_KEYS = ("num_repeats", "caption_extension", "class_tokens", "shuffle_caption",
                      "keep_tokens", "keep_tokens_separator", "caption_separator",
                      "caption_dropout_rate", "caption_tag_dropout_rate", "flip_aug",
                      "alpha_mask")
SUBSET_ONLY_KEYS = ("image_dir", "is_reg", "conditioning_data_dir")
IGNORED_KEYS = ("debug_dataset", "cache_info", "color_aug", "random_crop", "face_crop_aug_range",
                "token_warmup_min", "token_warmup_step", "caption_dropout_every_n_epochs",
                "enable_wildcard", "secondary_separator", "network_multiplier",
                "resize_interpolation", "custom_attributes")
REFUSED_KEYS = {
    "metadata_file": "kohya fine-tuning datasets (metadata_file) are not supported; use image_dir "
                     "with one caption file per image",
    "caption_prefix": "caption_prefix is not supported; use the trigger word or edit the captions",
    "caption_suffix": "caption_suffix is not supported; edit the caption files instead",
}

GENERAL_KEYS = DATASET_KEYS + SUBSET_SHARED_KEYS
DATASETS_KEYS = DATASET_KEYS + SUBSET_SHARED_KEYS + ("subsets",)
SUBSETS_KEYS = SUBSET_ONLY_KEYS + SUBSET_SHARED_KEYS


def _fail(source: Path, where: str, key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{source}: {where}.{key} = {value!r}: must be {allowed}")


def _int(source, where, key, value, low, high=None, multiple=1) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (
        high is None or value <= high) and value % multiple == 0
    if not ok:
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        extra = f", a multiple of {multiple}" if multiple > 1 else ""
        raise _fail(source, where, key, value, f"a whole number {span}{extra}")
    return value


def _check_value(source: Path, where: str, key: str, value: Any) -> Any:
    """Validate one value and return it in the form the Subset/Settings fields take."""
    if key in ("enable_bucket", "bucket_no_upscale", "shuffle_caption", "flip_aug", "is_reg",
               "alpha_mask"):
        if not isinstance(value, bool):
            raise _fail(source, where, key, value, "true or false")
        return value
    if key == "num_repeats":
        return _int(source, where, key, value, 1, MAX_REPEATS)
    if key == "keep_tokens":
        return _int(source, where, key, value, 0)
    if key == "batch_size":
        return _int(source, where, key, value, 1, 256)
    if key == "bucket_reso_steps":
        return _int(source, where, key, value, 8, 1024, 8)
    if key in ("min_bucket_reso", "max_bucket_reso"):
        return _int(source, where, key, value, 64, 8192, 8)
    if key == "resolution":
        parts = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if (not isinstance(parts, list) or len(parts) not in (1, 2)
                or not all(isinstance(p, int) and not isinstance(p, bool) and 64 <= p <= 4096
                           and p % 8 == 0 for p in parts)):
            raise _fail(source, where, key, value,
                        "a size like 512 or [768, 512] (64 to 4096, multiples of 8)")
        return (parts[0], parts[-1])
    if key == "validation_split":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 0.5:
            raise _fail(source, where, key, value, "a share from 0 to 0.5 (0.1 = one image in ten)")
        return float(value)
    if key == "validation_seed":
        return _int(source, where, key, value, 0, 2**32 - 1)
    if key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise _fail(source, where, key, value, "a number from 0 to 1")
        return float(value)
    if key == "caption_extension":
        if not isinstance(value, str) or not value.strip(". "):
            raise _fail(source, where, key, value, "a file extension like '.txt'")
        return value if value.startswith(".") else "." + value
    if key in ("class_tokens", "keep_tokens_separator", "caption_separator", "image_dir",
               "conditioning_data_dir"):
        if not isinstance(value, str):
            raise _fail(source, where, key, value, "text in quotes")
        if key in ("caption_separator", "image_dir", "conditioning_data_dir") and not value:
            raise _fail(source, where, key, value, "non-empty text")
        return value
    return value  # ignored keys: any value


def _check_table(source: Path, where: str, table: Any, allowed: tuple[str, ...],
                 notes: list[tuple[Path, str]]) -> dict[str, Any]:
    """Known keys only, each value checked. Returns the usable keys."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {where} must be a table of settings")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in REFUSED_KEYS:
            raise ConfigError(f"{source}: {where}.{key}: {REFUSED_KEYS[key]}")
        if key in IGNORED_KEYS:
            notes.append((source, f"{where}.{key} is not used by LoRA Studio and was ignored"))
            continue
        if key not in allowed:
            if key in DATASET_KEYS:
                raise ConfigError(f"{source}: {where}.{key}: '{key}' is a dataset setting; put it "
                                  "in [general] or [[datasets]], not in a subset")
            if key in SUBSET_ONLY_KEYS or key == "subsets":
                level = "[[datasets]]" if key == "subsets" else "[[datasets.subsets]]"
                raise ConfigError(f"{source}: {where}.{key}: '{key}' belongs in {level}")
            close = difflib.get_close_matches(key, allowed + IGNORED_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (
                f"; valid keys here: {', '.join(allowed)}")
            raise ConfigError(f"{source}: unknown key '{key}' in {where}{hint}")
        if key != "subsets":
            out[key] = _check_value(source, where, key, value)
    return out


def load_kohya_dataset(path: Path | str, dataset: DatasetConfig) -> ResolvedDataset:
    """Read a kohya dataset TOML into subsets and dataset-wide settings."""
    source = Path(os.path.expanduser(str(path)))
    data = read_toml(source)
    base = resolved(source).parent
    notes: list[tuple[Path, str]] = []
    for key in data:
        if key not in ("general", "datasets"):
            close = difflib.get_close_matches(key, ["general", "datasets"], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; a kohya dataset file has [general] and [[datasets]]"
            raise ConfigError(f"{source}: unknown key '{key}' at the top level{hint}")
    general = _check_table(source, "[general]", data.get("general", {}), GENERAL_KEYS, notes)
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        raise DatasetError(f"{source}: no [[datasets]] in this kohya dataset file")

    config_settings = DatasetSettings.from_config(dataset)
    defaults = subset_defaults(dataset)
    per_dataset: list[dict[str, Any]] = []
    subsets: list[Subset] = []
    for d_index, raw_dataset in enumerate(datasets):
        where = f"datasets[{d_index}]"
        table = _check_table(source, where, raw_dataset, DATASETS_KEYS, notes)
        merged = {**general, **table}
        per_dataset.append({key: merged.get(key, getattr(config_settings, key))
                            for key in DATASET_KEYS})
        raw_subsets = raw_dataset.get("subsets", [])
        if not isinstance(raw_subsets, list):
            raise ConfigError(f"{source}: {where}.subsets must be a list of [[datasets.subsets]]")
        if not raw_subsets:
            notes.append((source, f"{where} has no [[datasets.subsets]]; nothing read from it"))
        shared = {k: v for k, v in merged.items() if k in SUBSET_SHARED_KEYS}
        for s_index, raw_subset in enumerate(raw_subsets):
            s_where = f"{where}.subsets[{s_index}]"
            options = {**defaults, **shared,
                       **_check_table(source, s_where, raw_subset, SUBSETS_KEYS, notes)}
            if "image_dir" not in options:
                raise ConfigError(f"{source}: {s_where} has no image_dir (the folder of images)")
            image_dir = _beside(base, options.pop("image_dir"))
            if not image_dir.is_dir():
                raise DatasetError(f"image folder not found: {image_dir} ({s_where}.image_dir in "
                                   f"{source})")
            alpha_mask = options.pop("alpha_mask", False)
            options["masked_loss"] = options["masked_loss"] or alpha_mask
            masks = options.pop("conditioning_data_dir", None)
            if masks is not None and not options["masked_loss"]:
                notes.append((source, f"{s_where}.conditioning_data_dir is read as the mask "
                                      "folder only with masked loss on (dataset.masked_loss, or "
                                      "alpha_mask = true here); the masks are not used"))
            options["mask_folder"] = mask_folder_of(
                _beside(base, masks) if masks else None,
                f"{s_where}.conditioning_data_dir in {source}", options["masked_loss"])
            subsets.append(Subset(image_dir=image_dir, name=image_dir.name, source=s_where,
                                  **options))

    settings = _one_setting_per_job(source, per_dataset, config_settings)
    return ResolvedDataset(unique_names(subsets), settings, notes)


def _beside(base: Path, folder: str) -> Path:
    """A folder the TOML names: relative to the TOML's own folder, `~` expanded."""
    path = Path(os.path.expanduser(folder))
    return path if path.is_absolute() else base / path


def _one_setting_per_job(source: Path, per_dataset: list[dict[str, Any]],
                         config_settings: DatasetSettings) -> DatasetSettings:
    chosen: dict[str, Any] = {}
    for key in DATASET_KEYS:
        values = [d[key] for d in per_dataset]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"datasets[{i}] has {v!r}" for i, v in enumerate(values))
            raise ConfigError(
                f"{source}: the datasets use different {key} ({shown}); LoRA Studio trains one "
                "resolution, batch size and bucket setup per job - make them equal, or train "
                "them as separate jobs")
        chosen[key] = values[0]
    if chosen["min_bucket_reso"] > chosen["max_bucket_reso"]:
        raise ConfigError(f"{source}: min_bucket_reso ({chosen['min_bucket_reso']}) is larger than "
                          f"max_bucket_reso ({chosen['max_bucket_reso']})")
    return DatasetSettings(**chosen, background_color=config_settings.background_color,
                           min_image_side=config_settings.min_image_side)
