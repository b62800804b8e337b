"""`lora-train preflight`: what this machine offers a run, before it starts.

The GPUs the trainer sees (name, free and total memory) and the run's estimated peak GPU
memory per process (trainer.vram), with what to do when it does not fit. The window runs it as
a child process (`--json`), since the window itself never imports torch; it shows the
estimate and offers several processes when more than one GPU is there.
Exit codes: 0 (also when the estimate can't be made: that is said), 2 bad input.
"""

from __future__ import annotations

import argparse
import json

from trainer.vram import GIB


def cmd_preflight(args: argparse.Namespace) -> int:
    from trainer.cli import config_from_args
    from trainer.vram import cuda_devices, estimate_for_config

    config = config_from_args(args)
    devices = cuda_devices()
    estimate, error = None, None
    if args.devices_only:
        error = "not asked for (--devices-only)"
    elif config.model.path is not None:
        try:
            estimate = estimate_for_config(config)
        except Exception as failure:  # noqa: BLE001 - said in the output, never a traceback
            error = f"{type(failure).__name__}: {failure}"
    else:
        error = "no base model picked (model.path)"
    used = devices[: config.precision.processes] if devices else []
    free = min((d["free_bytes"] for d in used), default=None)
    problem = estimate.problem(free) if estimate and free is not None else None
    if args.json:
        print(json.dumps({
            "devices": devices,
            "estimate": None if estimate is None else {
                "total_bytes": estimate.total, "text": estimate.text(),
                "weights_bytes": estimate.weights, "training_state_bytes": estimate.training_state,
                "activations_bytes": estimate.activations + estimate.transient},
            "estimate_error": error, "problem": problem}))
        return 0
    for device in devices:
        print(f"GPU {device['index']}: {device['name']}, {device['free_bytes'] / GIB:.1f} GB "
              f"free of {device['total_bytes'] / GIB:.1f} GB")
    if not devices:
        print("no CUDA GPU is visible: training runs on the CPU")
    print(f"estimate per process: {estimate.text()}" if estimate else f"no estimate: {error}")
    if problem:
        print(f"warning: {problem}")
    return 0


def add_preflight_command(commands) -> None:
    from trainer.cli import add_job_flags

    preflight = commands.add_parser(
        "preflight", help="the GPUs this machine has and the run's estimated GPU memory")
    add_job_flags(preflight)
    preflight.add_argument("--json", action="store_true", help="print one JSON object")
    preflight.add_argument("--devices-only", action="store_true",
                           help="list the GPUs only (a second: no model is looked at)")
    preflight.set_defaults(func=cmd_preflight)
