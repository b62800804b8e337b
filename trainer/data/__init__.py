"""The dataset: subsets (config folders or a kohya TOML), the pre-training scan and its report,
images, buckets, captions and the per-epoch batch order.

Pure Python + Pillow + numpy; torch is imported only inside `image_to_tensor` and
`latent_mask`.

Training loop, in short:
    report = scan_dataset(config)            # DatasetError / ConfigError: exit 2
    print(format_report(report))
    for epoch ...:
        for b, batch in enumerate(epoch_batches(report.items, report.settings.batch_size,
                                                config.schedule.seed, epoch)):
            for slot, index in enumerate(batch):
                item = report.items[index]
                caption, flip = sample_plan(item, seed, epoch, b, slot)
                pixels, crop = image_to_tensor(load_image(item.path, bg), item.bucket, flip)
    With dataset.masked_loss, `item.mask` says where its mask comes from (masks.py).
"""

from trainer.data.batches import derive_seed, epoch_batches, sample_plan, sample_rng
from trainer.data.buckets import Bucket, aspect_error, assign_bucket, make_buckets
from trainer.data.captions import (MAX_CAPTION_CHARS, base_caption, build_caption,
                                   captions_are_static, read_caption, split_tags)
from trainer.data.images import (fit_to_bucket, image_to_array, image_to_tensor, load_image,
                                 open_upright, probe_image, to_rgb)
from trainer.data.masks import MaskSource, latent_mask
from trainer.data.kohya_toml import load_kohya_dataset
from trainer.data.report import (DatasetReport, ImageItem, SkippedFile, bucket_info,
                                 dataset_dirs, format_report, tag_frequency)
from trainer.data.scan import resolve_dataset, scan_dataset, scan_subsets
from trainer.data.subsets import (IMAGE_EXTENSIONS, DatasetError, DatasetSettings, Subset,
                                  folder_subsets, parse_repeat_folder)

__all__ = [
    "IMAGE_EXTENSIONS", "MAX_CAPTION_CHARS", "Bucket", "DatasetError", "DatasetReport",
    "DatasetSettings", "ImageItem", "MaskSource", "SkippedFile", "Subset", "aspect_error",
    "assign_bucket", "base_caption", "bucket_info", "build_caption", "captions_are_static",
    "dataset_dirs", "derive_seed", "epoch_batches", "fit_to_bucket", "folder_subsets",
    "format_report", "image_to_array", "image_to_tensor", "latent_mask", "load_image",
    "load_kohya_dataset", "make_buckets", "open_upright", "parse_repeat_folder", "probe_image",
    "read_caption", "resolve_dataset", "sample_plan", "sample_rng", "scan_dataset",
    "scan_subsets", "split_tags", "tag_frequency", "to_rgb",
]
