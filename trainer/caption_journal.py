"""The undo journal of a folder's captions: one per folder, for the last change made to it.

Both the bulk edits (`lora-train captions`) and the captioning models (`lora-train caption`)
write through it, so `--undo` on either command restores the last change, whichever made it.
The journal (`UNDO_FILE` in the folder) is JSON lines: a header, then one line per caption
file - its previous bytes, or that it did not exist - appended and fsynced *before* that file
is replaced (atomically). A change that stops halfway (a cancel, a kill, a full disk) therefore
leaves every caption old or new, and the journal names every new one: undo puts the old bytes
back and removes the journal. A last line cut off by a kill names a file not yet written.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from trainer.atomic import atomic_write_bytes, atomic_write_text
from trainer.config_io import ConfigError

UNDO_FILE = ".lora-studio-caption-undo.json"


# trainer.atomic's temp files: ".<name>.<8 random characters>.tmp" beside the file
TEMP_FILE = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp\Z")


def sweep_temp_files(captions: Iterable[Path]) -> int:
    """Remove the temp files a killed write left beside these caption files (its caption was
    not replaced: the old one is in place); how many. Each folder is listed once."""
    by_folder: dict[Path, set[str]] = {}
    for caption in captions:
        by_folder.setdefault(Path(caption).parent, set()).add(Path(caption).name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            match = TEMP_FILE.match(entry)
            if match and match["name"] in names:
                Path(folder, entry).unlink(missing_ok=True)
                removed += 1
    return removed


class CaptionEditError(ConfigError):
    """A caption change that can't be made (a bad regular expression, nothing to undo)."""


class CaptionJournal:
    """Records each caption's previous bytes before it is replaced. Started lazily by the first
    `record`, so a change that writes nothing keeps the folder's earlier journal (and undo)."""

    def __init__(self, folder: Path, what: str) -> None:
        self.path = Path(folder) / UNDO_FILE
        self.what = what
        self._handle = None
        self.recorded = 0

    def record(self, caption: Path, before: bytes | None) -> None:
        """Note `caption`'s bytes as they are now (None: no file); call before replacing it."""
        if self._handle is None:
            atomic_write_text(self.path, json.dumps({"journal": 2, "what": self.what}) + "\n")
            self._handle = open(self.path, "a", encoding="utf-8")
        # absolute (links not followed: the write replaces a link itself): an undo run from
        # another current folder must find the same file
        entry = {"path": os.path.abspath(caption),
                 "before": None if before is None else base64.b64encode(before).decode()}
        self._handle.write(json.dumps(entry) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.recorded += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> CaptionJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entries(journal: Path) -> list[dict]:
    text = journal.read_text(encoding="utf-8")
    try:  # the first format: one JSON object {"files": [...]}, written whole
        whole = json.loads(text)
        if isinstance(whole, dict) and isinstance(whole.get("files"), list):
            return whole["files"]
    except ValueError:
        pass
    lines = text.splitlines()
    try:
        if not lines or "journal" not in json.loads(lines[0]):
            raise ValueError("no header line")
    except ValueError as error:
        raise CaptionEditError(f"{journal} is damaged ({error}); the captions are as they "
                               "are now") from None
    entries = []
    for number, line in enumerate(lines[1:], 2):
        try:
            entry = json.loads(line)
        except ValueError:
            if number == len(lines):  # cut off while being written: its file was not touched
                break
            raise CaptionEditError(f"{journal} line {number} is damaged; the captions are as "
                                   "they are now") from None
        entries.append(entry)
    if not all(isinstance(e, dict) and "path" in e and "before" in e for e in entries):
        raise CaptionEditError(f"{journal} has an entry without a path; the captions are as "
                               "they are now")
    return entries


def undo(folder: Path) -> list[Path]:
    """Put back what the folder's last change replaced; the caption files restored."""
    journal = Path(folder) / UNDO_FILE
    if not journal.is_file():
        raise CaptionEditError(f"nothing to undo in {folder} (no {UNDO_FILE}: the last change "
                               "was undone already, or none was made here)")
    entries = _entries(journal)
    inside = Path(os.path.abspath(folder))
    outside = [e["path"] for e in entries
               if not Path(os.path.abspath(e["path"])).is_relative_to(inside)]
    if outside:  # written for another folder (copied?) or edited: touch nothing
        raise CaptionEditError(f"{journal} names files outside {inside} ({outside[0]}); "
                               "nothing was restored")
    restored: dict[Path, None] = {}
    # Newest first: a file recorded twice ends with its oldest bytes.
    for entry in reversed(entries):
        path, before = Path(os.path.abspath(entry["path"])), entry["before"]
        if before is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(path, base64.b64decode(before))
        restored[path] = None
    journal.unlink()
    sweep_temp_files(restored)
    return list(restored)
