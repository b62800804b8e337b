"""`lora-train export | verify | inspect`: commands about LoRA files.

Exit codes: 0 done (and, for export / verify, every check passed), 1 a check failed,
2 unreadable input (a missing or damaged file, a checkpoint or base model that cannot be read).
Every problem is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.paths import special_file_problem


def _input_errors() -> tuple[type[BaseException], ...]:
    from trainer.checkpoint import CheckpointError
    from trainer.config_io import ConfigError
    from trainer.export import ExportError
    from trainer.lora_reader import LoraFileError
    from trainer.models import ModelError

    return (LoraFileError, ExportError, ModelError, CheckpointError, ConfigError)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _quiet() -> None:
    """Library chatter (deprecations, optional-dependency notes) is not for the artist."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def cmd_inspect(args: argparse.Namespace) -> int:
    from trainer.lora_reader import format_inspect, read_lora_file

    try:
        lora = read_lora_file(args.file)
    except _input_errors() as error:
        return _fail(str(error))
    print(format_inspect(lora))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from trainer.verify import verify_lora_file

    if problem := special_file_problem(args.base):  # a FIFO or a link loop, named as such
        return _fail(problem)
    if not Path(args.base).exists():
        return _fail(f"base model {args.base} does not exist; pass the model the LoRA was "
                     "trained on (a diffusers folder or a .safetensors file)")
    _quiet()
    try:
        report = verify_lora_file(args.file, args.base)
    except _input_errors() as error:
        return _fail(str(error))
    print(report.format())
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.export import export_checkpoint
    from trainer.verify import verify_lora_file

    user = {"title": args.title, "author": args.author, "description": args.description,
            "trigger_phrase": args.trigger, "tags": args.tag, "license": args.license}
    try:
        result = export_checkpoint(args.checkpoint, args.out, precision=args.precision,
                                   user=user, cover=args.cover,
                                   hide_folder_names=args.hide_folder_names)
    except _input_errors() as error:
        return _fail(str(error))
    except ValueError as error:  # a metadata field too long or unknown
        return _fail(str(error))
    print(f"LoRA written to {result.path}")
    if args.no_verify:
        print("not verified (--no-verify)")
        return 0
    _quiet()
    base = result.base_model
    if base is None:
        print(f"note: the run's base model {result.base_model_named or '(unset)'} is not there; "
              f"checking the file alone (run `lora-train verify {result.path} --base MODEL` "
              "to check it in diffusers)")
    try:
        report = verify_lora_file(result.path, base)
    except _input_errors() as error:
        return _fail(f"the file was written but cannot be verified: {error}")
    print(report.format())
    return 0 if report.ok else 1


def add_lora_commands(commands: argparse._SubParsersAction) -> None:
    """Register the LoRA-file subcommands on the `lora-train` parser."""
    export = commands.add_parser(
        "export", help="write the LoRA file from a checkpoint (then verify it)",
        description="Turn a checkpoint folder (or a run folder: its newest checkpoint) into one "
                    "kohya-format .safetensors LoRA with its metadata, then verify it against "
                    "the run's base model.")
    export.add_argument("checkpoint", type=Path,
                        help="run folder or checkpoints/step-NNNNNN folder")
    export.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    export.add_argument("--precision", choices=("fp16", "bf16", "fp32"),
                        help="tensor precision in the file (default: the run's, fp16)")
    export.add_argument("--title", help="modelspec.title (default: the run's output name)")
    export.add_argument("--author", help="modelspec.author")
    export.add_argument("--description", help="modelspec.description")
    export.add_argument("--trigger", help="trigger words (modelspec.trigger_phrase)")
    export.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    export.add_argument("--license", help="modelspec.license")
    export.add_argument("--cover", type=Path,
                        help="cover image, stored downscaled (256 px) as modelspec.thumbnail")
    export.add_argument("--hide-folder-names", action="store_true", default=None,
                        help="leave local folder names out of the metadata")
    export.add_argument("--no-verify", action="store_true", help="skip reading the file back")
    export.set_defaults(func=cmd_export)

    verify = commands.add_parser(
        "verify", help="check a LoRA file against its base model (exit 0 only if all pass)",
        description="Check key names, tensors, metadata and hashes, then load the file with "
                    "diffusers and compare the applied weights and outputs.")
    verify.add_argument("file", type=Path, help="a LoRA .safetensors file")
    verify.add_argument("--base", type=Path, required=True,
                        help="the base model: a diffusers folder or a .safetensors checkpoint")
    verify.set_defaults(func=cmd_verify)

    inspect = commands.add_parser(
        "inspect", help="print what a LoRA file holds (ours, kohya, diffusers/PEFT, OneTrainer)")
    inspect.add_argument("file", type=Path, help="a LoRA .safetensors file")
    inspect.set_defaults(func=cmd_inspect)
