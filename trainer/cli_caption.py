"""`lora-train caption FOLDER --model PATH`: captions from a model on this computer.

    lora-train caption FOLDER --model wd-tagger/model.onnx            # only uncaptioned images
    lora-train caption FOLDER --model blip-folder --mode replace --dry-run --limit 8
    lora-train caption FOLDER --model ... --mode append --exclude "1girl" --general-threshold 0.5
    lora-train caption FOLDER --undo                                   # the last change, restored

`--json` prints one JSON object a line: {"event": "loading"}, then {"event": "caption", ...}
per image (done, total, image, before, after, changed), then {"event": "finished", ...}; the
window reads them. SIGTERM or Ctrl+C stops between two images (exit 130), every caption old or
new. Exit codes: 0 done, 2 bad input (folder, model, mode), 130 stopped.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path


def cmd_caption(args: argparse.Namespace) -> int:
    from trainer.cli_captions import caption_folder_of, undo_last_change
    from trainer.config_io import ConfigError
    from trainer.offline import forbid_network

    folder = caption_folder_of(args)
    if args.undo:
        return undo_last_change(folder, args.json)
    if not args.model:
        raise ConfigError("--model is needed: a WD14 tagger's .onnx file (with "
                          "selected_tags.csv beside it) or a transformers captioner folder")
    forbid_network()
    from trainer.captioning import open_captioner
    from trainer.captioning.caption_run import caption_folder
    from trainer.captioning.wd14_tagger import TaggerSettings

    settings = TaggerSettings(args.general_threshold, args.character_threshold,
                              tuple(args.exclude))
    say(args, {"event": "loading", "model": str(args.model)}, f"loading {args.model} ...")
    captioner = open_captioner(args.model, tagger=settings, prompt=args.prompt,
                               max_new_tokens=args.max_new_tokens)

    stop_requested: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.append(signum)
        signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def report(item, result) -> None:
        before = item.before
        say(args, {"event": "caption", "done": result.done, "total": result.total,
                   "image": str(item.image), "caption_file": str(item.caption_file),
                   "before": before, "after": item.after, "changed": item.changed,
                   "error": item.error},
            f"[{result.done}/{result.total}] {item.image.name}: " + (
                f"skipped, {item.error}" if item.error else
                f"{'(no caption)' if before is None else repr(before)} -> {item.after!r}"
                if item.changed else "unchanged"))

    try:
        result = caption_folder(folder, captioner, args.mode, extension=args.caption_extension,
                                separator=args.separator, dry_run=args.dry_run,
                                limit=args.limit, report=report,
                                should_stop=lambda: bool(stop_requested))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    verb = "would change" if args.dry_run else "changed"
    say(args, {"event": "finished", "done": result.done, "total": result.total,
               "changed": result.changed, "stopped": result.stopped, "dry_run": args.dry_run,
               "skipped": result.skipped,
               "journal": str(result.journal) if result.journal else None},
        (f"stopped after {result.done} of {result.total} image(s); " if result.stopped else "")
        + f"{verb} {result.changed} caption(s)"
        + (" (dry run: nothing written)" if args.dry_run else "")
        + (f"; undo with: lora-train caption {folder} --undo" if result.journal else ""))
    return 130 if result.stopped else 0


def say(args: argparse.Namespace, event: dict, text: str) -> None:
    print(json.dumps(event) if args.json else text, flush=True)
    if not args.json and event.get("skipped"):
        for image, why in event["skipped"].items():
            print(f"skipped {image}: {why}", file=sys.stderr)


def add_caption_command(commands) -> None:
    from trainer.captioning.caption_run import MODES

    caption = commands.add_parser("caption", help="caption images with a tagger or captioning "
                                                  "model on this computer (with undo)")
    caption.add_argument("folder", type=Path, help="a folder of images (and caption files)")
    caption.add_argument("--model", type=Path, help="a WD14 tagger (.onnx file with "
                         "selected_tags.csv beside it) or a transformers image-to-text folder "
                         "(BLIP, GIT, Florence-2)")
    caption.add_argument("--mode", choices=MODES, default="missing",
                         help="missing: only images without a caption (default); append / "
                              "prepend: add to the existing caption; replace: write anew")
    caption.add_argument("--general-threshold", type=float, default=0.35,
                         help="tagger: keep general tags at least this likely (0.35)")
    caption.add_argument("--character-threshold", type=float, default=0.85,
                         help="tagger: keep character tags at least this likely (0.85)")
    caption.add_argument("--exclude", action="append", default=[],
                         help="tagger: a tag never written (repeatable)")
    caption.add_argument("--prompt", default="", help="image-to-text: the text the caption "
                         "starts from (Florence-2: a task such as <DETAILED_CAPTION>)")
    caption.add_argument("--max-new-tokens", type=int, default=75)
    caption.add_argument("--dry-run", action="store_true", help="show the new captions only")
    caption.add_argument("--limit", type=int, help="caption only the first N images")
    caption.add_argument("--json", action="store_true", help="one JSON object per line")
    caption.add_argument("--undo", action="store_true", help="restore the last change")
    caption.add_argument("--caption-extension", default=".txt")
    caption.add_argument("--separator", default=",", help="the tag separator (default ,)")
    caption.set_defaults(func=cmd_caption)
