"""The scan's result: the images a job trains on, every file it cannot use and why, and the
figures derived from them (buckets, steps per epoch, the exported file's dataset metadata)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.buckets import Bucket, aspect_error
from trainer.data.captions import disk_tags
from trainer.data.masks import MaskSource
from trainer.data.subsets import DatasetSettings, Subset


@dataclass(frozen=True)
class ImageItem:
    """One usable image."""

    path: Path
    subset: Subset
    width: int  # after EXIF rotation
    height: int
    caption: str  # the caption file's text ("" when there is none or it is empty)
    caption_path: Path | None  # None: no caption file
    bucket: Bucket
    repeats: int  # times per epoch; regularisation images are balanced like kohya does
    mask: MaskSource | None = None  # masked loss: where its mask comes from; None: trains whole

    @property
    def is_reg(self) -> bool:
        return self.subset.is_reg

    @property
    def flip_aug(self) -> bool:
        return self.subset.flip_aug


@dataclass(frozen=True)
class SkippedFile:
    """A file the scan could not use (`warning=False`), or a note about one (`warning=True`:
    the file is still used, or was never meant to be an image)."""

    path: Path
    reason: str
    warning: bool = False


@dataclass
class DatasetReport:
    subsets: list[Subset]
    settings: DatasetSettings
    buckets: list[Bucket]  # the bucket list the images were assigned from
    items: list[ImageItem] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    scan_seconds: float = 0.0
    validation: list[ImageItem] = field(default_factory=list)  # held out: never trained on

    @property
    def errors(self) -> list[SkippedFile]:
        return [entry for entry in self.skipped if not entry.warning]

    @property
    def warnings(self) -> list[SkippedFile]:
        return [entry for entry in self.skipped if entry.warning]

    @property
    def num_images(self) -> int:
        """Training images (not regularisation), each counted once."""
        return sum(1 for item in self.items if not item.is_reg)

    @property
    def num_reg_images(self) -> int:
        return sum(1 for item in self.items if item.is_reg)

    @property
    def num_train_images(self) -> int:
        """Training images times their repeats (kohya's ss_num_train_images)."""
        return sum(item.repeats for item in self.items if not item.is_reg)

    @property
    def total_with_repeats(self) -> int:
        """Samples per epoch: every item times its repeats, regularisation included."""
        return sum(item.repeats for item in self.items)

    @property
    def bucket_counts(self) -> dict[Bucket, int]:
        """Images per bucket (each image once), sorted by bucket."""
        return dict(sorted(Counter(item.bucket for item in self.items).items()))

    @property
    def bucket_counts_with_repeats(self) -> dict[Bucket, int]:
        counts: Counter[Bucket] = Counter()
        for item in self.items:
            counts[item.bucket] += item.repeats
        return dict(sorted(counts.items()))

    def steps_per_epoch(self, batch_size: int | None = None) -> int:
        """Batches per epoch, as kohya counts them: per bucket, ceil(samples / batch size)."""
        size = batch_size or self.settings.batch_size
        return sum(math.ceil(n / size) for n in self.bucket_counts_with_repeats.values() if n)

    @property
    def usable(self) -> bool:
        return any(not item.is_reg and item.repeats > 0 for item in self.items)

    @property
    def masked_loss(self) -> bool:
        """Masks are in use for some folder (dataset.masked_loss, or kohya's alpha_mask)."""
        return any(subset.masked_loss for subset in self.subsets)

    @property
    def masks(self) -> dict[Path, MaskSource]:
        """{image: its mask's source} of every image with a mask, held-out ones included."""
        return {item.path: item.mask for item in self.items + self.validation if item.mask}

    def mask_counts(self) -> dict[str, int]:
        """Images (training, regularisation and held out) by mask source: mask_file, alpha,
        none (trained whole)."""
        counts = Counter(item.mask.kind if item.mask else "none"
                         for item in self.items + self.validation)
        return {kind: counts[kind] for kind in ("mask_file", "alpha", "none")}


def tag_frequency(report: DatasetReport) -> dict[str, dict[str, int]]:
    """{folder name: {tag: images carrying it}} over the captions as written on disk (class
    tokens for images without a caption file), for the exported file's ss_tag_frequency."""
    out: dict[str, dict[str, int]] = {subset.name: {} for subset in report.subsets}
    for item in report.items:
        counts = out.setdefault(item.subset.name, {})
        for tag in dict.fromkeys(disk_tags(item)):
            counts[tag] = counts.get(tag, 0) + 1
    return out


def dataset_dirs(report: DatasetReport) -> dict[str, dict[str, int]]:
    """{folder name: {"n_repeats": n, "img_count": n}} (kohya's ss_dataset_dirs)."""
    counts = Counter(item.subset.name for item in report.items)
    return {subset.name: {"n_repeats": subset.num_repeats, "img_count": counts[subset.name]}
            for subset in report.subsets}


def bucket_info(report: DatasetReport) -> dict:
    """kohya's ss_bucket_info: {"buckets": {i: {"resolution": [w, h], "count": n}},
    "mean_img_ar_error": x}, counts with repeats."""
    buckets = {str(i): {"resolution": list(bucket), "count": count}
               for i, (bucket, count) in enumerate(report.bucket_counts_with_repeats.items())}
    errors = [abs(aspect_error(i.width, i.height, i.bucket)) for i in report.items]
    return {"buckets": buckets,
            "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0}


def report_counts(report: DatasetReport, folders: list[Path]) -> dict:
    """The scan's figures as plain data (`lora-train validate --json`, which the window's
    health report and step calculator read, so they count exactly what training will):
    totals, and per dataset folder the usable images, images seen per epoch and the repeats
    of the subsets in it (the folder itself, or its kohya `N_name` subfolders)."""
    per_folder = {}
    for folder in folders:
        mine = [subset for subset in report.subsets
                if folder in (subset.image_dir, subset.image_dir.parent)]
        items = [item for item in report.items if item.subset in mine]
        per_folder[str(folder)] = {
            "images": len(items), "per_epoch": sum(item.repeats for item in items),
            "repeats": sorted({subset.num_repeats for subset in mine}),
            "masks": sum(1 for item in items if item.mask)}
    return {"images": report.num_images, "reg_images": report.num_reg_images,
            "per_epoch": report.total_with_repeats, "batch_size": report.settings.batch_size,
            "steps_per_epoch": report.steps_per_epoch(), "skipped": len(report.errors),
            "validation_images": len(report.validation),
            "masked_loss": report.masked_loss, "masks": report.mask_counts(),
            "skipped_files": {str(entry.path): entry.reason for entry in report.errors},
            "folders": per_folder}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _mask_line(report: DatasetReport) -> str:
    counts = report.mask_counts()
    total = sum(counts.values())
    where = sorted({str(s.mask_folder) for s in report.subsets if s.masked_loss and s.mask_folder})
    parts = ([f"{counts['mask_file']} from mask files"
              + (f" in {', '.join(where)}" if where else "")] if counts["mask_file"] else [])
    parts += [f"{counts['alpha']} from their alpha channel"] if counts["alpha"] else []
    masked = counts["mask_file"] + counts["alpha"]
    return (f"Masked loss: {masked} of {_plural(total, 'image')} {'has' if masked == 1 else 'have'}"
            " a mask" + (f" ({'; '.join(parts)})" if parts else "")
            + f"; {counts['none']} trained on the whole image")


def format_report(report: DatasetReport) -> str:
    """The scan as readable text: what is used, buckets, steps per epoch, then every file that
    was skipped (and every warning) with its reason."""
    s = report.settings
    lines = [
        f"Images used: {report.num_images} for training"
        + (f" + {report.num_reg_images} regularisation" if report.num_reg_images else "")
        + f", {report.total_with_repeats} per epoch with repeats"
        + f" (scanned in {report.scan_seconds:.1f} s)",
    ]
    if report.validation:
        whole = [subset.name for subset in report.subsets if subset.is_validation]
        how = ([f"{s.validation_split:g} of each folder, seed {s.validation_seed}"]
               if s.validation_split else []) + [f"all of {name}" for name in whole]
        lines.append(f"Held out for the validation loss: {_plural(len(report.validation), 'image')}"
                     f" ({'; '.join(how)}), never trained on")
    if report.masked_loss:
        lines.append(_mask_line(report))
    res = f"{s.resolution[0]}x{s.resolution[1]}"
    if s.enable_bucket:
        lines.append(f"Resolution {res}, aspect-ratio buckets {s.min_bucket_reso}-"
                     f"{s.max_bucket_reso} px in steps of {s.bucket_reso_steps}"
                     + (", no upscaling" if s.bucket_no_upscale else ""))
    else:
        lines.append(f"Resolution {res}, no buckets (every image is cropped to {res})")
    counts = Counter(item.subset.name for item in report.items)
    lines.append("Folders:")
    for subset in report.subsets:
        kind = " (regularisation)" if subset.is_reg else ""
        lines.append(f"  {subset.name}: {_plural(counts[subset.name], 'image')} x "
                     f"{_plural(subset.num_repeats, 'repeat')}{kind}  [{subset.image_dir}]")
    if report.items:
        lines.append("Buckets:")
        with_repeats = report.bucket_counts_with_repeats
        for bucket, count in report.bucket_counts.items():
            lines.append(f"  {bucket[0]}x{bucket[1]}: {_plural(count, 'image')}"
                         f" ({with_repeats[bucket]} with repeats)")
    lines.append(f"Steps per epoch: {report.steps_per_epoch()} "
                 f"(batch size {s.batch_size})")
    if report.errors:
        lines.append(f"Skipped {_plural(len(report.errors), 'file')}:")
        lines += [f"  {entry.path}: {entry.reason}" for entry in report.errors]
    if report.warnings:
        lines.append(f"{_plural(len(report.warnings), 'warning')}:")
        lines += [f"  {entry.path}: {entry.reason}" for entry in report.warnings]
    if not report.usable:
        lines.append("Nothing usable: no training image could be used. Add images (PNG, JPEG, "
                     "WebP or BMP) with caption files, or set a trigger word or class tokens.")
    return "\n".join(lines)
