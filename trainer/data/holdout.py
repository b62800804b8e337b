"""The validation split: the images of each folder held out of training for the validation
loss (`dataset.validation_split`, kohya's `validation_split` / `validation_seed`).

A validation folder (`DatasetFolder.validation`) is held out whole. Per other training subset
(regularisation folders are never held out), the images in path order are
shuffled by a seed of their own (the seed and the folder's name) and the last round(n x split) are held
out: at least one when
the split is above 0 and the folder has two or more, never all of them. The same images are
held out on every run with the same seed, whatever the batch size, epochs or other folders.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Sequence

from trainer.data.batches import derive_seed


@dataclass(frozen=True)
class Split:
    """The training images and the held-out ones (indices into the scanned items)."""

    train: list[int]
    held_out: list[int]


def held_out_count(images: int, split: float) -> int:
    """How many of a folder's `images` the split holds out."""
    if split <= 0 or images < 2:
        return 0
    return min(images - 1, max(1, round(images * split)))


def split_items(items: Sequence, split: float, seed: int) -> Split:
    """Which of the scanned `items` (each with `.subset`, `.path`, `.is_reg`) train and which
    are held out."""
    if not 0 <= split <= 0.5:
        raise ValueError(f"validation_split must be from 0 to 0.5, got {split}")
    held: set[int] = set()
    by_subset: dict[object, list[int]] = {}
    for index, item in enumerate(items):
        if not item.is_reg:
            by_subset.setdefault(item.subset, []).append(index)
    for subset, indices in by_subset.items():
        if getattr(subset, "is_validation", False):  # a validation folder: all of it
            held.update(indices)
            continue
        ordered = sorted(indices, key=lambda i: str(items[i].path))
        # seeded by the folder's name too: adding, reordering or moving folders keeps each
        # one's pick (a moved dataset resumes with the same images held out)
        folder = zlib.crc32(items[ordered[0]].path.parent.name.encode())
        random.Random(derive_seed("validation", seed, folder)).shuffle(ordered)
        count = held_out_count(len(ordered), split)
        held.update(ordered[len(ordered) - count:] if count else [])
    return Split(train=[i for i in range(len(items)) if i not in held],
                 held_out=sorted(held, key=lambda i: str(items[i].path)))
