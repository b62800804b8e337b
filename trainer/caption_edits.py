"""Bulk caption edits over a dataset folder, with an undo of the last change.

The edits, applied to every caption of the folder's images (its kohya `N_name` subfolders
too), in this order: find/replace (plain text or a regular expression) on the whole caption,
remove tags, add tags (at the end, where missing), then the trigger word first (moved there,
or added when a caption lacks it). Tags are split on the dataset's separator and joined with
it and a space, as kohya writes them. An image without a caption file gets one only from the
tag edits (a find/replace has nothing to work on).

Every change writes an undo journal first (`UNDO_FILE` in the folder: each changed file's
previous bytes, or that it did not exist), then each caption atomically; `undo` restores the
last change exactly and removes the journal. A change that stops halfway leaves every file old
or new, and its journal restores the old ones.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path

from trainer.atomic import atomic_write_bytes, atomic_write_text
from trainer.config_io import ConfigError
from trainer.data.captions import split_tags

UNDO_FILE = ".lora-studio-caption-undo.json"


class CaptionEditError(ConfigError):
    """An edit that can't be made (a bad regular expression, nothing to undo): exit 2."""


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


def caption_files(folder: Path, extension: str = ".txt") -> list[Path]:
    """The caption file of every image the dataset scan would see in `folder` (existing or
    not), in path order."""
    from trainer.config import DatasetConfig, DatasetFolder
    from trainer.data.scan import list_subset
    from trainer.data.subsets import folder_subsets

    resolved = folder_subsets(DatasetConfig(folders=[DatasetFolder(path=folder)],
                                            caption_extension=extension))
    paths = []
    for subset in resolved.subsets:
        candidates, _ = list_subset(subset)
        paths += [c.caption_path or c.path.with_suffix(extension) for c in candidates]
    return sorted(paths)


def plan(folder: Path, edit: CaptionEdit, extension: str = ".txt") -> list[CaptionChange]:
    """What the edit would change (the preview); files it leaves as they are are not listed."""
    changes = []
    for path in caption_files(folder, extension):
        before = path.read_bytes() if path.is_file() else None
        if before is None and not edit.edits_tags:
            continue
        change = CaptionChange(path, before, "")
        after = edit.apply(change.before_text)
        if after != change.before_text or (before is None and after):
            changes.append(CaptionChange(path, before, after))
    return changes


def apply_changes(folder: Path, changes: list[CaptionChange]) -> Path | None:
    """Write the journal, then every caption; the journal's path (None: nothing changed)."""
    if not changes:
        return None
    journal = Path(folder) / UNDO_FILE
    atomic_write_text(journal, json.dumps({"files": [
        {"path": str(change.path),
         "before": None if change.before is None else base64.b64encode(change.before).decode()}
        for change in changes]}, indent=1))
    for change in changes:
        atomic_write_text(change.path, change.after)
    return journal


def undo(folder: Path) -> list[Path]:
    """Put back what the last change replaced; the files restored."""
    journal = Path(folder) / UNDO_FILE
    if not journal.is_file():
        raise CaptionEditError(f"nothing to undo in {folder} (no {UNDO_FILE}: the last change "
                               "was undone already, or none was made here)")
    try:
        entries = json.loads(journal.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CaptionEditError(f"{journal} is damaged ({error}); the captions are as they "
                               "are now") from None
    restored = []
    for entry in entries:
        path = Path(entry["path"])
        if entry["before"] is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(path, base64.b64decode(entry["before"]))
        restored.append(path)
    journal.unlink()
    return restored
