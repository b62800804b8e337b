"""`lora-train captions FOLDER ...`: bulk caption edits with a preview and an undo, and the
tag-frequency table (the numbers the exported file's ss_tag_frequency will hold).

    lora-train captions FOLDER --find "red" --replace "crimson" [--regex]
    lora-train captions FOLDER --add-tag "my_style" --remove-tag "lowres" --first "my_style"
    lora-train captions FOLDER ... --dry-run        # the preview: what would change
    lora-train captions FOLDER --frequency          # tag -> images, per folder
    lora-train captions FOLDER --undo               # the last change, restored exactly
    ... --json                                      # one JSON object: every change

Exit codes: 0 done, 2 bad input (a missing folder, a bad regular expression, nothing to undo).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PREVIEW_LINES = 20


def caption_folder_of(args: argparse.Namespace) -> Path:
    """The folder a caption command works on (ConfigError when it is none)."""
    from trainer.config_io import ConfigError

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; pass the folder of images and captions")
    return folder


def undo_last_change(folder: Path, as_json: bool) -> int:
    """`--undo` of `captions` and `caption` alike: the folder has one journal for both."""
    from trainer.caption_journal import undo

    restored = undo(folder)
    print(json.dumps({"event": "undone", "restored": len(restored)}) if as_json else
          f"restored {len(restored)} caption file(s) in {folder} as they were before the "
          "last change")
    return 0


def cmd_captions(args: argparse.Namespace) -> int:
    from trainer.caption_edits import CaptionEdit, apply_changes, plan
    from trainer.config_io import ConfigError

    folder = caption_folder_of(args)
    if args.undo:
        return undo_last_change(folder, args.json)
    if args.frequency:
        return _frequency(folder, args)
    edit = CaptionEdit(find=args.find or "", replace_with=args.replace or "", regex=args.regex,
                       remove_tags=tuple(args.remove_tag), add_tags=tuple(args.add_tag),
                       first=args.first or "", separator=args.separator)
    if not (edit.find or edit.edits_tags):
        raise ConfigError("say what to change: --find/--replace, --add-tag, --remove-tag or "
                          "--first (or --frequency, --undo)")
    changes = plan(folder, edit, args.caption_extension)
    if not args.dry_run:
        apply_changes(folder, changes)
    if args.json:  # every change, for the window's preview table
        print(json.dumps({"changes": [{"caption_file": str(c.path), "before": (
            c.before_text if c.before is not None else None), "after": c.after}
            for c in changes], "changed": len(changes), "dry_run": args.dry_run}))
        return 0
    for change in changes[:PREVIEW_LINES]:
        before = change.before_text if change.before is not None else "(no caption file)"
        print(f"{change.path.name}: {before!r} -> {change.after!r}")
    if len(changes) > PREVIEW_LINES:
        print(f"... and {len(changes) - PREVIEW_LINES} more")
    if args.dry_run:
        print(f"{len(changes)} caption(s) would change (dry run: nothing written)")
        return 0
    print(f"changed {len(changes)} caption(s)" + (
        f"; undo with: lora-train captions {folder} --undo" if changes else ""))
    return 0


def _frequency(folder: Path, args: argparse.Namespace) -> int:
    from trainer.config import DatasetConfig, DatasetFolder, TrainConfig
    from trainer.data import scan_dataset, tag_frequency

    config = TrainConfig(dataset=DatasetConfig(folders=[DatasetFolder(path=folder)],
                                               caption_extension=args.caption_extension,
                                               caption_separator=args.separator))
    table = tag_frequency(scan_dataset(config))
    if args.json:
        print(json.dumps(table))
        return 0
    for name, counts in table.items():
        print(f"{name}:")
        for tag, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {count:5d}  {tag}")
    return 0


def add_captions_command(commands) -> None:
    captions = commands.add_parser("captions", help="bulk caption edits (with undo) and the "
                                                    "tag-frequency table")
    captions.add_argument("folder", type=Path, help="a folder of images and caption files")
    captions.add_argument("--find", help="text to replace in every caption")
    captions.add_argument("--replace", help="what --find becomes (default: nothing)")
    captions.add_argument("--regex", action="store_true", help="--find is a regular expression")
    captions.add_argument("--add-tag", action="append", default=[], help="a tag every caption "
                          "gets (at the end; repeatable)")
    captions.add_argument("--remove-tag", action="append", default=[],
                          help="a tag removed from every caption (repeatable)")
    captions.add_argument("--first", help="the trigger word, moved first (added where missing)")
    captions.add_argument("--dry-run", action="store_true", help="show what would change only")
    captions.add_argument("--frequency", action="store_true",
                          help="print how many images carry each tag, per folder")
    captions.add_argument("--json", action="store_true", help="print JSON: the changes, or --frequency's table")
    captions.add_argument("--undo", action="store_true", help="restore the last change")
    captions.add_argument("--caption-extension", default=".txt")
    captions.add_argument("--separator", default=",", help="the tag separator (default ,)")
    captions.set_defaults(func=cmd_captions)
