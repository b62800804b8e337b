"""Captioning a folder with a model: the modes, the preview, the writes and their undo.

Modes, per image of the folder (the same images the dataset scan sees):
- `missing`: only images with no caption (no file, or an empty one) get one - the default,
  and the only mode that never changes an existing caption;
- `append` / `prepend`: the model's tags or text after / before the existing caption, joined
  by the separator; tags the caption already has are not added twice;
- `replace`: the model's caption instead of the existing one.
The model is not run on images the mode leaves alone. Each caption is written as soon as it is
made, through the folder's undo journal (trainer/caption_journal.py): a cancel or a kill
halfway leaves every caption file old or new, and `undo` restores them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from trainer.atomic import atomic_write_text
from trainer.caption_edits import captioned_images
from trainer.caption_journal import CaptionJournal, sweep_temp_files
from trainer.captioning import Captioner, CaptionModelError
from trainer.data.captions import joiner, split_tags

MODES = ("missing", "append", "prepend", "replace")


def combined(mode: str, before: str | None, made: str, separator: str = ",") -> str | None:
    """The caption after `mode` puts the model's `made` with `before` (None: no file); None
    when the mode leaves this caption as it is."""
    if mode not in MODES:
        raise CaptionModelError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    old = (before or "").strip()
    if mode == "missing":
        return made if not old else None
    if mode == "replace" or not old:
        return made
    have = set(split_tags(old, separator))
    new = [tag for tag in split_tags(made, separator) if tag not in have]
    if not new:
        return None
    parts = [old, joiner(separator).join(new)]
    return joiner(separator).join(parts if mode == "append" else parts[::-1])


def needs_model(mode: str, before: str | None) -> bool:
    return mode != "missing" or not (before or "").strip()


@dataclass(frozen=True)
class Captioned:
    """One image's outcome, as the progress reports it."""

    image: Path
    caption_file: Path
    before: str | None
    after: str | None  # None: left as it was
    error: str = ""

    @property
    def changed(self) -> bool:
        return self.after is not None and self.after != self.before


@dataclass
class RunResult:
    total: int = 0  # images the mode would caption
    done: int = 0
    changed: int = 0
    stopped: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # image -> why
    journal: Path | None = None


def read_before(caption_file: Path) -> bytes | None:
    try:
        return caption_file.read_bytes()
    except FileNotFoundError:
        return None


def caption_folder(folder: Path, captioner: Captioner, mode: str = "missing", *,
                   extension: str = ".txt", separator: str = ",", background: str = "#ffffff",
                   dry_run: bool = False, limit: int | None = None,
                   report: Callable[[Captioned, RunResult], None] = lambda item, result: None,
                   should_stop: Callable[[], bool] = lambda: False) -> RunResult:
    """Caption the folder's images as `mode` says; `report` after each image, `should_stop`
    before each (a cancel ends the run between two files, never inside one)."""
    from trainer.data.images import load_image

    combined(mode, None, "", separator)  # a bad mode is refused before any work
    todo = []
    for image, caption_file in captioned_images(Path(folder), extension):
        before = read_before(caption_file)
        text = None if before is None else before.decode("utf-8-sig", errors="replace")
        if needs_model(mode, text):
            todo.append((image, caption_file, before, text))
    todo = todo[:limit] if limit is not None else todo
    if not dry_run:  # an earlier run killed mid-write left its temp files
        sweep_temp_files(caption_file for _, caption_file, _, _ in todo)
    result = RunResult(total=len(todo))
    with CaptionJournal(Path(folder), f"captions from a model ({mode})") as journal:
        for image, caption_file, before, text in todo:
            if should_stop():
                result.stopped = True
                break
            try:
                made = captioner.caption(load_image(image, background))
            except (OSError, ValueError, SyntaxError) as error:  # what Pillow raises
                result.skipped[str(image)] = f"could not be read ({error})"
                item = Captioned(image, caption_file, text, None, result.skipped[str(image)])
            else:
                now = read_before(caption_file)  # written since the scan (the user, a tool)?
                if now != before:  # then it is what the mode works on, and what undo restores
                    before = now
                    text = None if now is None else now.decode("utf-8-sig", errors="replace")
                after = combined(mode, text, made, separator) if made else None
                item = Captioned(image, caption_file, text, after)
                if item.changed and not dry_run:
                    journal.record(caption_file, before)
                    atomic_write_text(caption_file, after)
                result.changed += item.changed
            result.done += 1
            report(item, result)
        if journal.recorded:
            result.journal = journal.path
    return result
