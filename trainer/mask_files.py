"""Which file is an image's mask (masked loss): the one rule the trainer and the window share.

With `dataset.masked_loss` on, an image's mask is the file in its folder's `mask_folder` with
the same stem (`cat.png` -> `masks/cat.png`, `masks/cat.jpg`, ...; any image suffix, any case
of the suffix). Kept free of torch, Pillow and trainer.data, so the window can find the file it
overlays on a thumbnail without importing the engine (see the import-linter contracts).
"""

from __future__ import annotations

import os
from pathlib import Path

from trainer.paths import is_regular_file

# The image suffixes the trainer reads, lower case (trainer.data uses this set for images too).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


def mask_files_in(mask_folder: Path) -> dict[str, Path]:
    """{stem: mask file} of one mask folder (not recursive; hidden files skipped). When two
    files share a stem (`cat.jpg`, `cat.png`) the first by name wins, so the choice is the same
    on every machine. A folder that cannot be listed gives {}: the dataset check names it."""
    try:
        with os.scandir(mask_folder) as iterator:
            names = sorted(entry.name for entry in iterator
                           if not entry.name.startswith(".") and is_regular_file(entry))
    except OSError:
        return {}
    found: dict[str, Path] = {}
    for name in names:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in IMAGE_EXTENSIONS and stem not in found:
            found[stem] = Path(mask_folder) / name
    return found


def mask_file_for(image: Path, mask_folder: Path) -> Path | None:
    """The mask file of `image` in `mask_folder`, or None when there is none. For one image (a
    thumbnail); a whole folder's images should share one `mask_files_in` listing."""
    return mask_files_in(mask_folder).get(Path(image).stem)

