"""`lora-train`: the headless front end. Same config, same engine, same event stream as the GUI.

Exit codes: 0 done, 1 the run failed, 2 bad input (config, dataset, model), 130 aborted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.config_io import (ConfigError, apply_override, build_config, config_to_toml,
                               list_presets, load_config_data, merge, parse_override,
                               preset_path)
from trainer.paths import resolved


def _quiet_libraries() -> None:
    """Library progress bars and chatter would tear our own progress bar apart."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the job (later flags win: preset < config < flags < --set)")
    group.add_argument("--preset", help=f"built-in preset or a TOML file ({', '.join(list_presets())})")
    group.add_argument("--config", type=Path, help="a config TOML file")
    group.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE", help="override one field, e.g. network.rank=32")
    group.add_argument("--model", type=str, help="base model: diffusers folder or .safetensors")
    group.add_argument("--data", type=str, action="append", default=[],
                       help="image folder (repeatable); kohya N_name subfolders are understood")
    group.add_argument("--dataset-config", type=str, help="a kohya dataset TOML file")
    group.add_argument("--out", type=str, help="run folder (config, events, samples, checkpoints, LoRA)")
    group.add_argument("--name", help="output name: the LoRA file is NAME.safetensors")
    group.add_argument("--steps", type=int, help="optimizer steps to train")
    group.add_argument("--init-from", type=str, help="start from an existing LoRA file (same "
                                                      "rank and targets)")
    group.add_argument("--processes", type=int, help="train data-parallel in N processes on this "
                       "machine, one per GPU (precision.processes; the batch size is per "
                       "process); several machines: run under torchrun, see the README")


def resumed_run_dir(resume: Path) -> Path:
    """The run folder of `--resume`: the folder itself, or the run holding a checkpoint."""
    resume = resolved(resume)
    return resume.parents[1] if resume.parent.name == "checkpoints" else resume


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    data: dict[str, Any] = {}
    resume = getattr(args, "resume", None)
    if resume and not (args.preset or args.config):
        # `lora-train train --resume RUN_DIR` alone continues the run with the config it ran.
        run_dir = resumed_run_dir(resume)
        if not (run_dir / "config.toml").exists():
            raise ConfigError(f"{run_dir} has no config.toml; pass --config or --preset too")
        data = load_config_data(run_dir / "config.toml")
        # where the run folder is now: a moved folder must not write back to where it was
        data.setdefault("output", {})["dir"] = str(run_dir)
    if args.preset:
        data = merge(data, load_config_data(preset_path(args.preset)))
    if args.config:
        data = merge(data, load_config_data(args.config))
    cwd = Path.cwd()

    def path_of(flag: str, value: str) -> str:
        # an empty path would resolve to the current folder: refuse it rather than guess
        if not str(value).strip():
            raise ConfigError(f"--{flag} is empty; give a path (or leave the flag out)")
        return str(resolved(cwd / value))

    short: dict[str, Any] = {}
    if args.model is not None:
        short["model"] = {"path": path_of("model", args.model)}
    if args.data:
        short["dataset"] = {"folders": [{"path": path_of("data", d)} for d in args.data]}
    if args.dataset_config is not None:
        short.setdefault("dataset", {})["kohya_config"] = path_of("dataset-config", args.dataset_config)
    if args.out is not None:
        short["output"] = {"dir": path_of("out", args.out)}
    if args.name is not None:  # '' is refused by output.name's own rule, never replaced
        short.setdefault("output", {})["name"] = args.name
    if args.init_from is not None:
        short["network"] = {"init_from": path_of("init-from", args.init_from)}
    if args.steps is not None:
        short["schedule"] = {"max_train_steps": args.steps, "max_train_epochs": None}
    if args.processes is not None:
        short["precision"] = {"processes": args.processes}
    data = merge(data, short)
    for text in args.overrides:
        parts, value = parse_override(text)
        data = apply_override(data, parts, value)
    return build_config(data, source="--set" if args.overrides else "")


def run_dir_for(config: TrainConfig) -> Path:
    return Path(config.output.dir) if config.output.dir else Path.cwd() / "runs" / config.output.name


def cmd_config_show(args: argparse.Namespace) -> int:
    print(config_to_toml(config_from_args(args)), end="")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from trainer.data import format_report, scan_dataset

    config = config_from_args(args)
    report = scan_dataset(config)
    if args.json:
        from trainer.data.report import report_counts

        folders = [folder.path for folder in config.dataset.folders]
        print(json.dumps({**report_counts(report, folders), "report": format_report(report)}))
    else:
        print(format_report(report))
    return 0 if report.usable else 2


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from trainer.models import make_tiny_model

    from trainer.families import get_family

    make_tiny_model(args.dir, single_file=args.single_file, seed=args.seed, family=args.family,
                    prediction_type="v_prediction" if args.v_prediction else "epsilon")
    print(f"tiny {get_family(args.family).display_label('v' if args.v_prediction else 'epsilon')} "
          f"model written to {args.dir}" + (f" and {args.single_file}" if args.single_file else ""))
    return 0


def cmd_dry_run(config: TrainConfig) -> int:
    from trainer.models import load_base_model
    from trainer.network import apply_lora_to

    base = load_base_model(config.model.path)
    network = apply_lora_to(base, config.network)
    for name in network.layers:
        print(name)
    print(f"{len(network.layers)} modules, {network.trainable_parameter_count():,} trainable "
          f"parameters (rank {config.network.rank}, alpha {config.network.alpha:g}, "
          f"scale {config.network_scale:g})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.model.path is None:
        raise ConfigError("model.path is not set: pass --model MODEL (a diffusers folder or "
                          "a .safetensors file)")
    from trainer.families.errors import ModelError
    from trainer.families.layout import describe_model

    model = describe_model(config.model.path)  # header and configs only: a second, not a load
    if not model.usable:
        raise ModelError(model.message, config.model.path)
    if config.network.init_from:  # its header now, not after the model has loaded
        from trainer.lora_reader import LoraFileError, read_lora_file

        try:
            read_lora_file(config.network.init_from)
        except LoraFileError as error:
            raise ConfigError(f"network.init_from: {error}") from None
    if args.dry_run:
        return cmd_dry_run(config)
    from trainer.checkpoint import list_checkpoints
    from trainer.job_ranks import is_writer_process
    from trainer.jobs import Job, JobSpec
    from trainer.progress import ProgressPrinter

    resume = resolved(args.resume) if args.resume else None
    if resume is not None and args.out is None:  # the run continues in its folder, wherever
        config.output.dir = resumed_run_dir(resume)  # it is now (not its stored output.dir)
    run_dir = run_dir_for(config)
    if resume is None and list_checkpoints(run_dir) and is_writer_process():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                          "or pick another --out")
    job = Job(JobSpec.from_config(config, run_dir, resume, args.force))
    writer = is_writer_process()  # under torchrun, rank 0 alone reports (and only its failure)
    printer = ProgressPrinter()
    interrupts = []

    def on_interrupt(signum: int, frame: object) -> None:
        interrupts.append(signum)
        if len(interrupts) == 1:
            job.send("stop")
            printer.note("stopping after this step (saving)... press Ctrl+C again to abort")
        else:
            job.kill()  # abort now: checkpoints are renamed into place, the last one stays

    # Ctrl+C, and what `kill`, `timeout`, systemd and batch schedulers send (SIGTERM) or a
    # closed terminal (SIGHUP): stop after this step and save; a second one aborts.
    stopping_signals = [signal.SIGINT, signal.SIGTERM] + (
        [signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {signum: signal.signal(signum, on_interrupt) for signum in stopping_signals}
    try:
        job.start()
        for event in job.events():
            printer.handle(event)
        job.wait()  # let the child finish its own clean-up before this process exits
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        printer.close()
    if len(interrupts) > 1:
        print(f"aborted; the last checkpoint in {run_dir} is intact (--resume {run_dir})",
              file=sys.stderr)
        return 130
    last = job.last_event
    if job.state == "finished" and not writer:
        return 0
    if job.state == "finished":
        print(f"LoRA written to {last.path}\nrun folder: {run_dir}")
        if interrupts:
            print(f"stopped early; continue with: lora-train train --resume {run_dir}")
        return 0
    print(f"error: {last.message}\nhint: {last.hint}", file=sys.stderr)
    from trainer.failures import BAD_INPUT

    return 2 if last.kind in BAD_INPUT else 1


def cmd_runs_list(args: argparse.Namespace) -> int:
    from trainer.runs import find_runs, format_summary, summarize_run

    folder = Path(args.dir).expanduser()
    if not folder.is_dir():  # "no runs under passwd" would read as an empty folder
        what = "does not exist" if not os.path.lexists(folder) else "is not a folder"
        raise ConfigError(f"{folder} {what}; pass the folder that holds the runs")
    runs = find_runs(folder)
    for run in runs:
        print(format_summary(summarize_run(run)))
    if not runs:
        print(f"no runs under {args.dir}")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from trainer.runs import format_summary, summarize_run

    if not (args.run_dir / "events.jsonl").exists():
        raise ConfigError(f"{args.run_dir} is not a run folder (it has no events.jsonl)")
    print(format_summary(summarize_run(args.run_dir), detailed=True))
    return 0


def cmd_demo_eval(args: argparse.Namespace) -> int:
    from trainer.demo.evaluate import evaluate_run, report

    result = evaluate_run(args.run_dir)
    print(report(result))
    print(f"wrote {args.run_dir / 'demo-eval.json'} and the picture grid demo-eval.png")
    print(f"demo_style_improvement {result.improvement:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-train", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a LoRA")
    add_job_flags(train)
    train.add_argument("--resume", type=Path, help="a run folder (its newest checkpoint) or a checkpoint folder")
    train.add_argument("--force", action="store_true", help="resume even if the config or dataset changed")
    train.add_argument("--dry-run", action="store_true", help="print the LoRA module list and parameter count, then stop")
    train.set_defaults(func=cmd_train)

    validate = commands.add_parser("validate", help="check the dataset and print a health report")
    add_job_flags(validate)
    validate.add_argument("--json", action="store_true",
                          help="print the figures and the report as one JSON object")
    validate.set_defaults(func=cmd_validate)

    config = commands.add_parser("config", help="show the effective config")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the effective config as TOML")
    add_job_flags(show)
    show.set_defaults(func=cmd_config_show)

    tiny = commands.add_parser("make-tiny-model", help="write a tiny random model of any family for tests and trials")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--single-file", type=Path, help="also write the weights as one single-file checkpoint")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--family", choices=("sd1", "sd2", "sdxl"), default="sd1",
                      help="the model family to imitate (default sd1)")
    tiny.add_argument("--v-prediction", action="store_true",
                      help="mark it as a v-prediction model (SD 2-768-v style)")
    tiny.set_defaults(func=cmd_make_tiny_model)

    runs = commands.add_parser("runs", help="past runs, from their event logs")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_commands.add_parser("list", help="one line per run under DIR")
    runs_list.add_argument("dir", type=Path, nargs="?", default=Path("runs"))
    runs_list.set_defaults(func=cmd_runs_list)
    runs_show = runs_commands.add_parser("show", help="steps, last loss and files of one run")
    runs_show.add_argument("run_dir", type=Path)
    runs_show.set_defaults(func=cmd_runs_show)

    demo = commands.add_parser("demo-eval", help="style score of a demo run: base model vs the LoRA")
    demo.add_argument("run_dir", type=Path, help="the folder `lora-train train --preset demo --out` wrote")
    demo.set_defaults(func=cmd_demo_eval)

    from trainer.cli_lora import add_lora_commands  # export, verify, inspect
    add_lora_commands(commands)
    from trainer.cli_preflight import add_preflight_command
    add_preflight_command(commands)
    from trainer.cli_grid import add_grid_command
    add_grid_command(commands)
    from trainer.cli_captions import add_captions_command
    add_captions_command(commands)
    from trainer.cli_caption import add_caption_command
    add_caption_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("aborted; the last checkpoint is intact", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lora-train ... | head`: the reader left; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # every failure becomes one clear message, never a traceback
        from trainer.failures import BAD_INPUT, classify

        failed = classify(error)
        text = str(error).strip() if failed.kind in BAD_INPUT else failed.message
        print(f"error: {text}\nhint: {failed.hint}", file=sys.stderr)
        if failed.kind == "internal" and os.environ.get("LORA_STUDIO_DEBUG"):
            raise
        return 2 if failed.kind in BAD_INPUT else 1


if __name__ == "__main__":
    sys.exit(main())
