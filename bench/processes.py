"""Several processes on one machine (trainer.distributed, gloo on this CPU): N processes at
batch b against one process at batch N*b, the same job.

Each run is a real job (`trainer.jobs.Job`, as the CLI and the window start it); the two runs
alternate, ROUNDS times. Threads are shared fairly: one process gets all `--threads`, each of
N processes `--threads / N`. Step time: the median interval between the Loss events rank 0
wrote (`events.jsonl` timestamps) after the first `--skip` steps. Result: the largest
difference between the two runs' LoRA tensors after the last step (the contract says they
train the same job: within 1e-5 on a pretrained tiny model, tests/test_distributed.py).

    python bench/processes.py --size tiny --steps 30            # a minute
    python bench/processes.py --size sd15 --px 256 --steps 4    # the SD 1.5 layout (slow)

Last line: `processes_step_ratio X` = N-process step time / one-process step time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import common


def step_times(run: Path, skip: int) -> list[float]:
    from trainer.events import read_events

    stamps = [e.time for e in read_events(run) if e.type == "loss"]
    return [b - a for a, b in zip(stamps, stamps[1:])][skip:]


def run_job(config, run: Path) -> None:
    from trainer.jobs import Job, JobSpec

    job = Job(JobSpec.from_config(config, run))
    job.start()
    last = list(job.events())[-1]
    job.wait()
    if last.type != "finished":
        raise SystemExit(f"the run in {run} failed: {last}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--px", type=int, default=None, help="image side (tiny: 64, sd15: 256)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="per process")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=2, help="first intervals left out (warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads in all, shared out")
    args = parser.parse_args()
    from safetensors.torch import load_file

    px = args.px or (64 if args.size == "tiny" else 256)
    root = Path(tempfile.mkdtemp(prefix="bench-processes-"))
    model = common.base_model(args.size, root)
    data = common.dataset(root, px, count=max(4, args.processes * args.batch * 2))
    n, b = args.processes, args.batch
    print(f"{args.size} {px} px: {n} processes at batch {b} ({args.threads // n} threads each) vs "
          f"1 process at batch {n * b} ({args.threads} threads), {args.steps} steps, "
          f"{args.rounds} rounds; {common.machine_line()}")
    times: dict[int, list[float]] = {1: [], n: []}
    worst = 0.0
    for round_index in range(args.rounds):
        runs = {}
        for processes in (1, n):
            config = common.bench_config(
                model, data, px, steps=args.steps, batch=b * n // processes,
                precision={"processes": processes, "threads": max(1, args.threads // processes)})
            runs[processes] = root / f"run-{round_index}-{processes}"
            run_job(config, runs[processes])
            times[processes] += step_times(runs[processes], args.skip)
        last = f"checkpoints/step-{args.steps:06d}/lora.safetensors"
        one, several = load_file(runs[1] / last), load_file(runs[n] / last)
        worst = max(worst, max((one[k] - several[k]).abs().max().item() for k in one))
        print(f"round {round_index}: 1 process {statistics.median(times[1]):.4f} s/step, {n} "
              f"processes {statistics.median(times[n]):.4f} s/step; {common.load_average()}",
              flush=True)
    ratio = statistics.median(times[n]) / statistics.median(times[1])
    print(f"largest |LoRA difference| after {args.steps} steps: {worst:.3g} "
          "(a random tiny U-Net's eps-sized gradients make AdamW amplify rounding; see "
          "docs/engine.md)")
    print(f"processes_step_ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
