"""Epoch order and per-sample randomness, as pure functions of (seed, epoch, position).

Nothing here touches a global RNG or Python's salted `hash()`: every `random.Random` is seeded
from a BLAKE2 digest of its purpose and coordinates, so a run resumed at any batch sees exactly
the same batches, captions and flips as an uninterrupted one, on any machine and Python.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Protocol

from trainer.data.captions import build_caption


class _Item(Protocol):
    bucket: tuple[int, int]
    repeats: int


def derive_seed(purpose: str, *numbers: int) -> int:
    """A 64-bit seed from a purpose and integers; stable across processes and versions."""
    text = "lora-studio/" + purpose + "/" + "/".join(str(int(n)) for n in numbers)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def epoch_batches(items: Sequence[_Item], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch, as lists of indices into `items`.

    Each item appears `item.repeats` times. Samples are grouped by bucket (a batch never mixes
    sizes), shuffled within the bucket, cut into batches of `batch_size` (a bucket's last batch
    may be smaller), and the batches are shuffled. Same (items, batch_size, seed, epoch) ->
    same list, always.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rng = random.Random(derive_seed("batches", seed, epoch))
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        if item.repeats > 0:
            by_bucket.setdefault(tuple(item.bucket), []).extend([index] * item.repeats)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        rng.shuffle(indices)
        batches += [indices[start:start + batch_size]
                    for start in range(0, len(indices), batch_size)]
    rng.shuffle(batches)
    return batches


def sample_rng(seed: int, epoch: int, batch_index: int, slot: int) -> random.Random:
    """The RNG for one sample: batch `batch_index` of epoch `epoch`, position `slot` in it."""
    return random.Random(derive_seed("sample", seed, epoch, batch_index, slot))


def sample_plan(item, seed: int, epoch: int, batch_index: int, slot: int) -> tuple[str, bool]:
    """(caption, flip) for one sample: flip is drawn first (only when the subset has flip_aug),
    then the caption's shuffle/dropout, all from `sample_rng(seed, epoch, batch_index, slot)`."""
    rng = sample_rng(seed, epoch, batch_index, slot)
    flip = bool(item.subset.flip_aug) and rng.random() < 0.5
    return build_caption(item, rng), flip
