"""Where a job's images come from: subsets, and the dataset-wide settings.

A subset is one folder of images with its own options (repeats, regularisation, class tokens,
caption handling, flip). Both sources - `config.dataset.folders` and a kohya dataset TOML - are
normalised into the same list of `Subset`s with every option filled in, plus one
`DatasetSettings` (resolution, batch size, buckets) for the whole job.

kohya's folder convention: a folder named `N_name` (N a whole number) means N repeats, and
`name` is the class token used for images without a caption file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from trainer.config import MAX_REPEATS, DatasetConfig
from trainer.mask_files import IMAGE_EXTENSIONS  # one list of image suffixes (the window's too)
from trainer.paths import is_folder, is_regular_file, link_problem

REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")


class DatasetError(ValueError):
    """A dataset that cannot be scanned at all (missing folder, no folders). The CLI exits 2."""


@dataclass(frozen=True)
class Subset:
    """One folder of images and every option that applies to it."""

    image_dir: Path
    name: str  # folder name as recorded in the exported file (unique within a job)
    num_repeats: int = 1
    is_reg: bool = False
    is_validation: bool = False  # every image held out (trainer.data.holdout)
    class_tokens: str = ""
    caption_extension: str = ".txt"
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    shuffle_caption: bool = False
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    trigger_word: str = ""  # never applied to regularisation images
    source: str = ""  # where it was defined, for messages
    masked_loss: bool = False  # masks from mask_folder, else alpha (trainer.data.masks)
    mask_folder: Path | None = None

    @property
    def effective_trigger(self) -> str:
        return "" if self.is_reg else self.trigger_word.strip()


@dataclass(frozen=True)
class DatasetSettings:
    """Dataset-wide settings. From the config, or from a kohya TOML where it sets them."""

    resolution: tuple[int, int] = (512, 512)
    batch_size: int = 1
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    background_color: str = "#ffffff"
    min_image_side: int = 64
    validation_split: float = 0.0  # the share of each subset held out (trainer.data.holdout)
    validation_seed: int | None = None

    @classmethod
    def from_config(cls, dataset: DatasetConfig) -> DatasetSettings:
        return cls(
            resolution=(dataset.resolution, dataset.resolution), batch_size=dataset.batch_size,
            enable_bucket=dataset.enable_bucket, min_bucket_reso=dataset.min_bucket_reso,
            max_bucket_reso=dataset.max_bucket_reso, bucket_reso_steps=dataset.bucket_reso_steps,
            bucket_no_upscale=dataset.bucket_no_upscale,
            background_color=dataset.background_color, min_image_side=dataset.min_image_side,
            validation_split=dataset.validation_split, validation_seed=dataset.validation_seed)


@dataclass
class ResolvedDataset:
    """The outcome of reading a job's dataset definition (before any image is opened)."""

    subsets: list[Subset]
    settings: DatasetSettings
    notes: list[tuple[Path, str]] = field(default_factory=list)  # warnings: (path, text)


def parse_repeat_folder(name: str) -> tuple[int, str] | None:
    """`10_my dog` -> (10, "my dog") (kohya: the rest after the first `_` is the class token).
    Anything else, zero repeats, or a prefix over MAX_REPEATS (a date like `20240101_trip`
    is not twenty million repeats) -> None."""
    match = REPEAT_FOLDER.match(name)
    if not match or not 1 <= int(match.group(1)) <= MAX_REPEATS:
        return None
    return int(match.group(1)), match.group(2)


def implausible_repeats(name: str) -> str:
    """Why a folder name that starts like a repeat count is not read as one ('' if it isn't
    such a name)."""
    match = REPEAT_FOLDER.match(name)
    if not match or int(match.group(1)) <= MAX_REPEATS:
        return ""
    return (f"the prefix {match.group(1)} of '{name}' is not read as a repeat count (the "
            f"most is {MAX_REPEATS:,})")


def subset_defaults(dataset: DatasetConfig) -> dict:
    """The per-subset options a config provides when a subset does not set them."""
    return {
        "caption_extension": dataset.caption_extension,
        "caption_separator": dataset.caption_separator,
        "keep_tokens": dataset.keep_tokens,
        "keep_tokens_separator": "",
        "shuffle_caption": dataset.shuffle_caption,
        "caption_dropout_rate": dataset.caption_dropout_rate,
        "caption_tag_dropout_rate": dataset.caption_tag_dropout_rate,
        "flip_aug": dataset.flip_aug,
        "trigger_word": dataset.trigger_word,
        "masked_loss": dataset.masked_loss,
    }


def unique_names(subsets: list[Subset]) -> list[Subset]:
    """Give subsets that share a folder name a ` (2)`, ` (3)` suffix, so metadata keeps both."""
    seen: dict[str, int] = {}
    out = []
    for subset in subsets:
        count = seen.get(subset.name, 0) + 1
        seen[subset.name] = count
        if count > 1:
            subset = replace(subset, name=f"{subset.name} ({count})")
        out.append(subset)
    return out


def _has_images(entries: list[os.DirEntry]) -> bool:
    return any(entry.name.lower().endswith(tuple(IMAGE_EXTENSIONS)) and is_regular_file(entry)
               for entry in entries)


def _list_dir(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as iterator:
        return sorted(iterator, key=lambda entry: entry.name)


def mask_folder_of(path: Path | None, field_name: str, used: bool) -> Path | None:
    """A subset's mask folder, checked when masks are used: a missing one, or a file, is an
    error naming the setting (training every image whole instead would be a silent surprise)."""
    if path is None:
        return None
    path = Path(os.path.expanduser(str(path)))
    if used and not path.exists():
        raise DatasetError(f"{field_name}: mask folder not found: {path} (make the folder of "
                           "masks, or clear the setting)")
    if used and not path.is_dir():
        raise DatasetError(f"{field_name}: {path} is a file, not a folder (give the folder "
                           "that holds the masks)")
    return path


def _sub_mask_folder(mask_folder: Path | None, name: str) -> Path | None:
    """An `N_name` subfolder's masks: in `mask_folder/N_name` when that folder exists (the
    masks laid out like the images), else in the mask folder itself."""
    if mask_folder is None or not (mask_folder / name).is_dir():
        return mask_folder
    return mask_folder / name


def folder_subsets(dataset: DatasetConfig) -> ResolvedDataset:
    """Subsets from `config.dataset.folders`.

    A folder that directly holds images is one subset: repeats from `DatasetFolder.repeats`,
    else from an `N_name` folder name, else 1; class tokens from `class_tokens`, else the
    `name` part of an `N_name` folder name. Each immediate subfolder named `N_name` is one more
    subset with N repeats and class tokens `name` (unless the folder sets `class_tokens`).
    Symlinked subfolders are not followed. Other subfolders are noted and ignored.
    """
    if not dataset.folders:
        raise DatasetError("no image folders given: add at least one folder to the dataset")
    defaults = subset_defaults(dataset)
    subsets: list[Subset] = []
    notes: list[tuple[Path, str]] = []
    for index, folder in enumerate(dataset.folders):
        path = Path(os.path.expanduser(str(folder.path)))
        if not path.exists():
            raise DatasetError(f"image folder not found: {path}")
        if not path.is_dir():
            raise DatasetError(f"not a folder: {path} (give the folder that holds the images)")
        try:
            entries = _list_dir(path)
        except OSError as error:
            raise DatasetError(f"cannot read image folder {path}: {error.strerror or error}") from None
        options = dict(defaults)
        if folder.caption_extension is not None:
            options["caption_extension"] = folder.caption_extension
        source = f"dataset.folders[{index}]"
        masks = mask_folder_of(folder.mask_folder, f"{source}.mask_folder", dataset.masked_loss)
        if masks is not None and not dataset.masked_loss:
            notes.append((masks, f"{source}.mask_folder is set but dataset.masked_loss is off: "
                                 "the masks are not used"))
        options["mask_folder"] = masks
        parsed = parse_repeat_folder(path.name)
        before = len(subsets)
        implausible = implausible_repeats(path.name)
        if _has_images(entries) and implausible and not folder.repeats:
            notes.append((path, f"{implausible}: trained with 1 repeat; set its Repeats to "
                                "change that"))
        if _has_images(entries):
            repeats = folder.repeats or (parsed[0] if parsed else 1)
            tokens = folder.class_tokens or (parsed[1] if parsed else "")
            subsets.append(Subset(image_dir=path, name=path.name, num_repeats=repeats,
                                  is_reg=folder.is_reg, is_validation=folder.validation,
                                  class_tokens=tokens, source=source,
                                  **options))
        for entry in entries:
            if masks is not None and os.path.abspath(entry.path) == os.path.abspath(masks):
                continue  # the masks kept inside the image folder are no subfolder to train
            if entry.name.startswith(".") or not is_folder(entry, follow_symlinks=False):
                if entry.is_symlink() and is_folder(entry):
                    notes.append((Path(entry.path), "symlinked folder not followed"))
                elif entry.is_symlink() and parse_repeat_folder(entry.name):
                    notes.append((Path(entry.path), link_problem(entry.path)
                                  or "symlinked folder not followed"))
                continue
            sub = parse_repeat_folder(entry.name)
            if sub is None:
                implausible = implausible_repeats(entry.name)
                why = (f"{implausible}; rename it like '10_name' to train on it" if implausible
                       else "only kohya repeat folders like '10_name' are read")
                notes.append((Path(entry.path), f"subfolder ignored ({why})"))
                continue
            subsets.append(Subset(image_dir=Path(entry.path), name=entry.name, num_repeats=sub[0],
                                  is_reg=folder.is_reg, is_validation=folder.validation,
                                  class_tokens=folder.class_tokens or sub[1],
                                  source=f"{source} / {entry.name}",
                                  **{**options,
                                     "mask_folder": _sub_mask_folder(masks, entry.name)}))
        if len(subsets) == before:
            notes.append((path, "no images here and no kohya repeat folders like '10_name'"))
    return ResolvedDataset(unique_names(subsets), DatasetSettings.from_config(dataset), notes)
