"""Captions: reading caption files, and the caption a training step sees.

The text a step trains on is built in kohya's order:
1. Base text: the caption file's text; if there is none (missing or empty file), the subset's
   class tokens.
2. Trigger word (`dataset.trigger_word`, never for regularisation images): if one of the tags
   *is* the trigger word it is moved to the front; if it already appears as a word inside a
   longer caption it is left where it is; otherwise it is prepended as the first tag. So with
   `keep_tokens = 1` the trigger word is the kept tag.
3. Per step, with the step's own `random.Random`: caption dropout (with `caption_dropout_rate`
   the whole caption becomes ""), else the tags after the first `keep_tokens` (or after kohya's
   `keep_tokens_separator`) are shuffled if `shuffle_caption`, then each of them is dropped with
   `caption_tag_dropout_rate`. Tags are re-joined with ", " (for the "," separator).
Without shuffle or dropout the caption is static and kept verbatim (only the trigger added),
which lets the text-encoder outputs be cached.
"""

from __future__ import annotations

import errno
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from trainer.paths import special_file_problem

MAX_CAPTION_CHARS = 4000  # far beyond CLIP's 75 tokens; keeps a runaway file from costing time
MAX_CAPTION_BYTES = 256 * 1024  # read no more of a caption file than this


class _Subset(Protocol):
    class_tokens: str
    caption_separator: str
    keep_tokens: int
    keep_tokens_separator: str
    shuffle_caption: bool
    caption_dropout_rate: float
    caption_tag_dropout_rate: float

    @property
    def effective_trigger(self) -> str: ...


class _Item(Protocol):
    caption: str
    subset: _Subset


@dataclass
class CaptionFile:
    """The text of one caption file, and anything worth telling the user about it."""

    text: str
    notes: list[str] = field(default_factory=list)


def joiner(separator: str) -> str:
    """How tags are re-joined: ", " for ",", a space separator stays as it is."""
    return separator if not separator.strip() else separator.strip() + " "


def split_tags(text: str, separator: str = ",") -> list[str]:
    return [tag.strip() for tag in text.split(separator) if tag.strip()]


def read_caption(path: Path, separator: str = ",") -> CaptionFile:
    """Read a caption file: UTF-8 (a BOM is fine); other bytes are replaced and noted. Several
    lines are joined into one caption with the separator (kohya reads only the first line).
    Text beyond MAX_CAPTION_CHARS is cut at a tag boundary and noted. Raises OSError."""
    notes: list[str] = []
    if special_file_problem(path):  # a FIFO named like a caption would block the scan forever
        raise OSError(errno.EINVAL, "a FIFO or device, not a text file")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_CAPTION_BYTES + 1)
    if len(raw) > MAX_CAPTION_BYTES:
        raw = raw[:MAX_CAPTION_BYTES]
        notes.append(f"caption file is over {MAX_CAPTION_BYTES // 1024} KiB; only the start is read")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("utf-8-sig", errors="replace")
        notes.append("caption is not UTF-8 text; unreadable characters were replaced with '\ufffd' "
                     "(re-save the file as UTF-8)")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = joiner(separator).join(lines)
    if len(text) > MAX_CAPTION_CHARS:
        cut = text.rfind(separator, 0, MAX_CAPTION_CHARS)
        text = text[:cut if cut > MAX_CAPTION_CHARS // 2 else MAX_CAPTION_CHARS].rstrip()
        notes.append(f"caption is very long; cut to its first {len(text)} characters (CLIP reads "
                     "only about the first 75 tokens anyway)")
    return CaptionFile(text, notes)


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


def caption_parts(item: _Item) -> tuple[list[str], list[str], str | None]:
    """(kept tags, the other tags, the verbatim caption or None when it had to be rebuilt)."""
    subset = item.subset
    separator = subset.caption_separator
    text = item.caption.strip() or subset.class_tokens.strip()
    trigger = subset.effective_trigger
    kts = subset.keep_tokens_separator
    explicit = bool(kts) and kts in text
    if explicit:
        fixed_part, flex_part = text.split(kts, 1)
        fixed, flex = split_tags(fixed_part, separator), split_tags(flex_part, separator)
    else:
        fixed, flex = [], split_tags(text, separator)
    verbatim: str | None = None if explicit else text
    if trigger:
        lowered = trigger.lower()
        first = (fixed or flex or [""])[0]
        if first.lower() == lowered:
            pass
        elif any(tag.lower() == lowered for tag in fixed + flex):
            fixed = [t for t in fixed if t.lower() != lowered]
            flex = [t for t in flex if t.lower() != lowered]
            (fixed if explicit else flex).insert(0, trigger)
            verbatim = None
        elif not _has_word(text, trigger):
            (fixed if explicit else flex).insert(0, trigger)
            verbatim = None
    if not explicit:
        keep = max(0, subset.keep_tokens)
        fixed, flex = flex[:keep], flex[keep:]
    return fixed, flex, verbatim


def base_caption(item: _Item) -> str:
    """The caption without any per-step randomness (what a static caption always is)."""
    fixed, flex, verbatim = caption_parts(item)
    if verbatim is not None:
        return verbatim
    return joiner(item.subset.caption_separator).join(fixed + flex)


def is_static(subset: _Subset) -> bool:
    return not (subset.shuffle_caption or subset.caption_dropout_rate > 0
                or subset.caption_tag_dropout_rate > 0)


def build_caption(item: _Item, rng: random.Random) -> str:
    """The caption one training sample sees. Uses only `rng` for its randomness; pass
    `sample_rng(seed, epoch, batch_index, slot)` so a resumed run sees the same captions."""
    subset = item.subset
    if is_static(subset):
        return base_caption(item)
    if subset.caption_dropout_rate > 0 and rng.random() < subset.caption_dropout_rate:
        return ""
    fixed, flex, _ = caption_parts(item)
    flex = list(flex)
    if subset.shuffle_caption:
        rng.shuffle(flex)
    if subset.caption_tag_dropout_rate > 0:
        flex = [tag for tag in flex if rng.random() >= subset.caption_tag_dropout_rate]
    return joiner(subset.caption_separator).join(fixed + flex)


def captions_are_static(subsets: Iterable[_Subset]) -> bool:
    """True when no subset shuffles or drops anything: every step of an image sees the same
    caption, so the text encoder's outputs can be cached (when it is not trained)."""
    return all(is_static(subset) for subset in subsets)


def disk_tags(item: _Item) -> list[str]:
    """The tags as written on disk (caption file, else class tokens), for ss_tag_frequency."""
    subset = item.subset
    text = item.caption.strip() or subset.class_tokens.strip()
    if subset.keep_tokens_separator:
        text = text.replace(subset.keep_tokens_separator, subset.caption_separator)
    return split_tags(text, subset.caption_separator)
