"""Bulk caption edits over a dataset folder, with an undo of the last change.

The edits, applied to every caption of the folder's images (its kohya `N_name` subfolders
too), in this order: find/replace (plain text or a regular expression) on the whole caption,
remove tags, add tags (at the end, where missing), then the trigger word first (moved there,
or added when a caption lacks it). Tags are split on the dataset's separator and joined with
it and a space, as kohya writes them. An image without a caption file gets one only from the
tag edits (a find/replace has nothing to work on).

Every change goes through the folder's undo journal (trainer/caption_journal.py): each
caption's previous bytes are recorded before it is replaced atomically, so a change that stops
halfway leaves every file old or new, and `undo` restores the last change exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trainer.atomic import atomic_write_text
from trainer.caption_journal import CaptionEditError, CaptionJournal, sweep_temp_files
from trainer.data.captions import split_tags


@dataclass(frozen=True)
class CaptionEdit:
    find: str = ""
    replace_with: str = ""
    regex: bool = False
    remove_tags: tuple[str, ...] = ()
    add_tags: tuple[str, ...] = ()
    first: str = ""  # the trigger word, moved or added first
    separator: str = ","

    def __post_init__(self) -> None:
        if self.regex:
            try:
                re.compile(self.find)
            except re.error as error:
                raise CaptionEditError(f"--find {self.find!r} is not a regular expression: "
                                       f"{error}") from None

    @property
    def edits_tags(self) -> bool:
        return bool(self.remove_tags or self.add_tags or self.first)

    def apply(self, text: str) -> str:
        if self.find:
            text = (re.sub(self.find, self.replace_with, text) if self.regex
                    else text.replace(self.find, self.replace_with))
        if not self.edits_tags:
            return text
        tags = [t for t in split_tags(text, self.separator) if t not in self.remove_tags]
        tags += [t for t in dict.fromkeys(self.add_tags) if t not in tags]
        if self.first:
            tags = [self.first] + [t for t in tags if t != self.first]
        return f"{self.separator} ".join(tags)


@dataclass(frozen=True)
class CaptionChange:
    path: Path
    before: bytes | None  # the file as it was, byte for byte; None: it did not exist
    after: str

    @property
    def before_text(self) -> str:
        return (self.before or b"").decode("utf-8-sig", errors="replace")


def captioned_images(folder: Path, extension: str = ".txt") -> list[tuple[Path, Path]]:
    """(image, its caption file - existing or not) of every image the dataset scan would see
    in `folder` (its kohya `N_name` subfolders too), in caption path order."""
    from trainer.config import DatasetConfig, DatasetFolder
    from trainer.data.scan import list_subset
    from trainer.data.subsets import folder_subsets

    resolved = folder_subsets(DatasetConfig(folders=[DatasetFolder(path=folder)],
                                            caption_extension=extension))
    pairs = []
    for subset in resolved.subsets:
        candidates, _ = list_subset(subset)
        pairs += [(c.path, c.caption_path or c.path.with_suffix(extension)) for c in candidates]
    return sorted(pairs, key=lambda pair: pair[1])


def plan(folder: Path, edit: CaptionEdit, extension: str = ".txt") -> list[CaptionChange]:
    """What the edit would change (the preview); files it leaves as they are are not listed."""
    changes = []
    for _, path in captioned_images(folder, extension):
        before = path.read_bytes() if path.is_file() else None
        if before is None and not edit.edits_tags:
            continue
        change = CaptionChange(path, before, "")
        after = edit.apply(change.before_text)
        if after != change.before_text or (before is None and after):
            changes.append(CaptionChange(path, before, after))
    return changes


def apply_changes(folder: Path, changes: list[CaptionChange]) -> int:
    """Journal and write every change; how many captions were written."""
    sweep_temp_files(change.path for change in changes)  # a killed earlier write's
    with CaptionJournal(folder, "bulk caption edit") as journal:
        for change in changes:
            journal.record(change.path, change.before)
            atomic_write_text(change.path, change.after)
    return len(changes)
