"""The dataset scan: every file of every subset checked once, before training starts.

A file that cannot be used is listed with its reason instead of failing the run later. Images
are checked in a thread pool (Pillow's decoders release the GIL); the result is in a stable
order - subsets in order, files sorted by name - whatever the threads do.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from trainer.config import TrainConfig
from trainer.data.buckets import assign_bucket, make_buckets
from trainer.data.captions import CaptionFile, read_caption
from trainer.data.holdout import split_items
from trainer.data.images import Probe, probe_image
from trainer.data.masks import MaskCheck, check_mask
from trainer.data.report import DatasetReport, ImageItem, SkippedFile
from trainer.data.kohya_toml import load_kohya_dataset
from trainer.data.subsets import (IMAGE_EXTENSIONS, DatasetSettings, ResolvedDataset, Subset,
                                  folder_subsets)
from trainer.mask_files import mask_files_in
from trainer.paths import is_regular_file, link_problem

UNSUPPORTED_EXTENSIONS = frozenset({".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl",
                                    ".psd", ".svg", ".ico", ".jfif", ".jp2", ".tga", ".exr"})
PARALLEL_FROM = 32  # fewer files than this: no thread pool


@dataclass(frozen=True)
class _Candidate:
    subset: Subset
    path: Path
    caption_path: Path | None
    mask_file: Path | None = None  # its file in the subset's mask folder (masked loss)


@dataclass(frozen=True)
class _Checked:
    probe: Probe
    caption: CaptionFile | None = None
    caption_error: str = ""
    mask: MaskCheck = MaskCheck()


def list_subset(subset: Subset) -> tuple[list[_Candidate], list[SkippedFile]]:
    """The image files of one subset folder (not recursive, symlinked folders never followed),
    with their caption files; duplicates, orphan captions and odd files reported."""
    skipped: list[SkippedFile] = []
    try:
        with os.scandir(subset.image_dir) as iterator:
            entries = sorted(iterator, key=lambda entry: entry.name)
    except OSError as error:
        return [], [SkippedFile(subset.image_dir,
                                f"folder unreadable ({error.strerror or error})")]
    extension = subset.caption_extension.lower()
    captions: dict[str, Path] = {}
    images: list[os.DirEntry] = []
    for entry in entries:
        name, lower = entry.name, entry.name.lower()
        if name.startswith("."):
            continue  # .DS_Store, ._name AppleDouble files, hidden files
        suffix = os.path.splitext(lower)[1]
        if not is_regular_file(entry):
            if suffix in IMAGE_EXTENSIONS or lower.endswith(extension):
                if problem := link_problem(entry.path):
                    skipped.append(SkippedFile(Path(entry.path), problem))
            continue
        if lower.endswith(extension) and len(name) > len(extension):
            captions[name[: len(name) - len(extension)]] = Path(entry.path)
        elif suffix in IMAGE_EXTENSIONS:
            images.append(entry)
        elif suffix in UNSUPPORTED_EXTENSIONS:
            skipped.append(SkippedFile(Path(entry.path), f"not a supported image type ({suffix}); "
                                       "convert it to PNG, JPEG, WebP or BMP"))
    candidates: list[_Candidate] = []
    first_with_stem: dict[str, str] = {}
    masks = mask_files_in(subset.mask_folder) if subset.masked_loss and subset.mask_folder else {}
    for entry in images:
        stem = os.path.splitext(entry.name)[0]
        if stem in first_with_stem:
            skipped.append(SkippedFile(
                Path(entry.path), f"duplicate name: {first_with_stem[stem]} has the same name and "
                f"would share its caption {stem}{subset.caption_extension}; only "
                f"{first_with_stem[stem]} is used"))
            continue
        first_with_stem[stem] = entry.name
        candidates.append(_Candidate(subset, Path(entry.path), captions.get(stem),
                                     masks.get(stem)))
    for stem, path in captions.items():
        if stem not in first_with_stem:
            skipped.append(SkippedFile(path, "caption without an image (no image file named "
                                       f"{stem}.png/.jpg/.jpeg/.webp/.bmp beside it)", warning=True))
    return candidates, skipped


def _check(candidate: _Candidate) -> _Checked:
    subset = candidate.subset
    probe = probe_image(candidate.path, alpha=subset.masked_loss)
    if not probe.ok:
        return _Checked(probe)
    mask = (check_mask(candidate.path, probe, candidate.mask_file, subset.mask_folder)
            if subset.masked_loss else MaskCheck())
    if candidate.caption_path is None:
        return _Checked(probe, mask=mask)
    try:
        return _Checked(probe, read_caption(candidate.caption_path, subset.caption_separator),
                        mask=mask)
    except OSError as error:
        reason = "permission denied" if isinstance(error, PermissionError) else (
            error.strerror or str(error))
        return _Checked(probe, caption_error=f"caption file unreadable ({reason})", mask=mask)


def _check_all(candidates: list[_Candidate]) -> list[_Checked]:
    with warnings.catch_warnings():
        # probe_image checks Pillow's pixel limit itself; the warning would only be noise
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if len(candidates) < PARALLEL_FROM:
            return [_check(c) for c in candidates]
        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan") as pool:
            return list(pool.map(_check, candidates, chunksize=16))


def _fallback_text(subset: Subset) -> str:
    """What an image without caption text trains on: class tokens, else the trigger word."""
    return subset.class_tokens.strip() or subset.effective_trigger


def _bucket_for(width: int, height: int, settings: DatasetSettings,
                buckets: list[tuple[int, int]]) -> tuple[int, int]:
    if not settings.enable_bucket:
        return settings.resolution
    return assign_bucket(width, height, buckets, settings.bucket_no_upscale, settings.resolution,
                         settings.bucket_reso_steps)


def balance_reg_repeats(items: list[ImageItem]) -> tuple[list[ImageItem], int]:
    """kohya's rule: regularisation images are repeated until they match the training images
    (with repeats) one for one. Returns the items with updated `repeats` and how many
    regularisation images end up unused (repeats 0)."""
    num_train = sum(item.repeats for item in items if not item.is_reg)
    reg_indices = [i for i, item in enumerate(items) if item.is_reg]
    if not reg_indices:
        return items, 0
    repeats = {i: 0 for i in reg_indices}
    total, first_pass = 0, True
    while total < num_train:
        for i in reg_indices:
            if first_pass:
                repeats[i] = items[i].subset.num_repeats
                total += repeats[i]
            else:
                repeats[i] += 1
                total += 1
            if total >= num_train:
                break
        first_pass = False
    out = [replace(item, repeats=repeats[i]) if item.is_reg else item
           for i, item in enumerate(items)]
    return out, sum(1 for i in reg_indices if repeats[i] == 0)


def scan_subsets(subsets: Iterable[Subset], settings: DatasetSettings,
                 notes: Iterable[tuple[Path, str]] = ()) -> DatasetReport:
    """Scan the given subsets (see `scan_dataset`)."""
    start = time.perf_counter()
    subsets = list(subsets)
    if settings.enable_bucket:
        buckets = make_buckets(settings.resolution, settings.min_bucket_reso,
                               settings.max_bucket_reso, settings.bucket_reso_steps)
    else:
        buckets = [settings.resolution]
    skipped = [SkippedFile(Path(path), text, warning=True) for path, text in notes]
    candidates: list[_Candidate] = []
    for subset in subsets:
        found, problems = list_subset(subset)
        candidates += found
        skipped += problems
    checked = _check_all(candidates)

    items: list[ImageItem] = []
    for candidate, result in zip(candidates, checked):
        subset, path = candidate.subset, candidate.path
        if not result.probe.ok:
            skipped.append(SkippedFile(path, result.probe.reason))
            continue
        width, height = result.probe.width, result.probe.height
        if min(width, height) < settings.min_image_side:
            skipped.append(SkippedFile(path, f"too small: {width}x{height} pixels (the shorter "
                                       f"side must be at least {settings.min_image_side})"))
            continue
        if result.caption_error:
            skipped.append(SkippedFile(path, result.caption_error))
            continue
        caption_path = candidate.caption_path
        text = result.caption.text if result.caption else ""
        if result.caption:
            skipped += [SkippedFile(caption_path, note, warning=True)
                        for note in result.caption.notes]
        if not text:
            fallback = _fallback_text(subset)
            caption_name = path.with_suffix(subset.caption_extension).name
            if not fallback:
                reason = (f"empty caption ({caption_name} has no text)" if caption_path else
                          f"missing caption (no {caption_name})")
                extra = (" (regularisation images never get the trigger word)"
                         if subset.is_reg and subset.trigger_word.strip() else "")
                skipped.append(SkippedFile(path, f"{reason}, and no trigger word or class tokens "
                                           f"to train it with{extra}"))
                continue
            if caption_path:
                skipped.append(SkippedFile(caption_path, f"empty caption; trained as "
                                           f"'{fallback}'", warning=True))
        skipped += [SkippedFile(path, note, warning=True) for note in result.mask.notes]
        if result.mask.problem:  # an empty mask would train nothing (and divide by zero)
            skipped.append(SkippedFile(path, result.mask.problem))
            continue
        bucket = _bucket_for(width, height, settings, buckets)
        items.append(ImageItem(path=path, subset=subset, width=width, height=height,
                               caption=text, caption_path=caption_path, bucket=bucket,
                               repeats=subset.num_repeats, mask=result.mask.source))
    split = split_items(items, settings.validation_split, settings.validation_seed or 0)
    validation = [items[i] for i in split.held_out]
    items = [items[i] for i in split.train]
    items, unused_reg = balance_reg_repeats(items)
    if unused_reg:
        skipped.append(SkippedFile(
            next(s.image_dir for s in subsets if s.is_reg),
            f"{unused_reg} regularisation images are not used: fewer are needed to match the "
            "training images (kohya's rule)", warning=True))
    skipped.sort(key=lambda entry: str(entry.path))
    return DatasetReport(subsets=subsets, settings=settings, buckets=buckets, items=items,
                         skipped=skipped, scan_seconds=time.perf_counter() - start,
                         validation=validation)


def resolve_dataset(config: TrainConfig) -> ResolvedDataset:
    """The subsets and settings of a job: from the kohya TOML when one is set, else the folders."""
    if config.dataset.kohya_config is not None:
        resolved = load_kohya_dataset(config.dataset.kohya_config, config.dataset)
        if config.dataset.folders:
            resolved.notes.append((Path(config.dataset.kohya_config),
                                   "dataset.folders ignored: the kohya dataset file lists the folders"))
        return resolved
    return folder_subsets(config.dataset)


def scan_dataset(config: TrainConfig) -> DatasetReport:
    """Scan a job's dataset: the folders of `config.dataset`, or its kohya dataset TOML.

    Raises `DatasetError` (a ValueError) when there is nothing to scan - no folders, a missing
    folder - and `ConfigError` for a bad kohya TOML. Every problem with a single file becomes a
    `SkippedFile` in the report instead.
    """
    resolved = resolve_dataset(config)
    settings = resolved.settings
    if settings.validation_seed is None:  # kohya: the training seed picks the held-out images
        settings = replace(settings, validation_seed=config.schedule.seed)
    return scan_subsets(resolved.subsets, settings, resolved.notes)
