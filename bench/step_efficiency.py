"""How close a training step comes to this machine's fp32 matmul rate: the project's real step
and the bare reference loop, for each image size and batch.

FLOPs: the matmuls and convolutions of one step (forward + backward as autograd runs it: the
frozen base weights get no weight gradient), counted with torch.utils.flop_counter on the meta
device; attention counts as its math path (Q K^T and A V, no recompute). Rate: the best of 5
timed 4096 x 4096 fp32 matmuls, measured before each size and at the end; the best is the peak.
Step time: the median of the timed steps after one warm-up, for the trainer (`trainer.loop.train`)
and the bare step on the same U-Net and LoRA tensors, alternating step by step in one run
(bench/common.py: `interleaved_steps`). Efficiency = FLOPs / step time / peak; the steps run
A B A B ... A and each bare step is compared with the mean of its two neighbours; trainer/bare
is 1 / the median of those time ratios: the trainer's efficiency as a share of the bare
step's.

    python bench/step_efficiency.py --size tiny                    # seconds
    python bench/step_efficiency.py --px 256 512 --batch 1 4       # SD 1.5 layout; 512 px
                                                                   # batch 4 is ~1 min a step
    python bench/step_efficiency.py --size tiny --compile          # precision.compile on/off

`--compile`: instead, the trainer with and without `precision.compile` (torch.compile of the
U-Net), one run each per size, alternating: the median step after COMPILE_WARMUP steps (the
compile happens in those), the compile's cost (the compiled run's time beyond its steps at
full speed), and the
largest difference between the two runs' per-step losses. Last line: `compile_speedup X`.

Last line: `step_efficiency_trainer_pct X`, the trainer's efficiency at the last size measured.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import common


COMPILE_WARMUP = 3  # steps in which torch.compile traces and compiles (forward, backward)


def compare_compile(args, model: Path, root: Path, sizes: list[int]) -> None:
    from trainer.events import read_events

    print("px   batch  plain s/step  compiled s/step  speed-up  compile cost s  max |loss diff|")
    for px in sizes:
        for batch in args.batch:
            data = common.dataset(root / f"{px}-{batch}", px, count=max(2, batch))
            times, losses, walls = {}, {}, {}
            for compiled in (False, True):
                config = common.bench_config(model, data, px, steps=COMPILE_WARMUP + args.steps,
                                             batch=batch, precision={"compile": compiled})
                run = root / f"run-{px}-{batch}-{compiled}"
                start = time.perf_counter()
                times[compiled] = common.project_steps(config, run)  # intervals from step 2
                walls[compiled] = time.perf_counter() - start
                losses[compiled] = [e.loss for e in read_events(run) if e.type == "loss"]
                gc.collect()
            plain = statistics.median(times[False][COMPILE_WARMUP - 1:])
            fast = statistics.median(times[True][COMPILE_WARMUP - 1:])
            # the compiled run's time beyond what its steps at full speed would have taken
            steps = COMPILE_WARMUP + args.steps
            cost = walls[True] - (walls[False] - steps * (plain - fast))
            diff = max(abs(a - b) for a, b in zip(losses[False], losses[True]))
            print(f"{px:<5d}{batch:<7d}{plain:>12.3f}{fast:>17.3f}{plain / fast:>10.2f}"
                  f"{cost:>16.1f}{diff:>17.2e}; {common.load_average()}", flush=True)
    print(f"compile_speedup {plain / fast:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="sd15")
    parser.add_argument("--px", type=int, nargs="+", default=None,
                        help="image sides (sd15: 256 512; tiny: 64)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=3,
                        help="timed bare steps per round (one more trainer step)")
    parser.add_argument("--rounds", type=int, default=1, help="runs (a model load each)")
    parser.add_argument("--count-on", choices=("meta", "cpu"), default="meta",
                        help="count FLOPs on the meta device (shapes only) or in one real step")
    parser.add_argument("--compile", action="store_true",
                        help="compare the trainer with and without precision.compile instead")
    common.add_threads_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    sizes = args.px or ([64] if args.size == "tiny" else [256, 512])
    root = Path(tempfile.mkdtemp(prefix="bench-efficiency-"))
    model = common.base_model(args.size, root)
    if args.compile:
        return compare_compile(args, model, root, sizes)
    print(f"{args.size}, rank 16 on every attention projection, {args.steps} timed bare steps "
          f"between {args.steps + 1} trainer steps after 1 warm-up step of each, {args.rounds} "
          f"round(s); {common.machine_line()}")
    rates = []
    rows = []
    for px in sizes:
        for batch in args.batch:
            rates.append(common.matmul_rate())
            print(f"fp32 matmul 4096^2: {rates[-1] / 1e9:.1f} GFLOP/s; {common.load_average()}",
                  flush=True)
            data = common.dataset(root / f"{px}-{batch}", px, count=max(2, batch))
            config = common.bench_config(model, data, px, steps=args.steps + 2, batch=batch)
            flops = common.step_flops(model, config, px // 8, args.count_on)
            trainer, bare, ratios = [], [], []
            for round_index in range(args.rounds):
                a, b = common.interleaved_steps(config, root / f"run-{px}-{batch}-{round_index}")
                trainer += a
                bare += b
                ratios += common.bracketed_ratios(a, b)
                gc.collect()
                print(f"{px} px batch {batch} round {round_index}: trainer "
                      f"{' '.join(f'{x:.2f}' for x in a)} s/step, bare "
                      f"{' '.join(f'{x:.2f}' for x in b)} s/step; {common.load_average()}",
                      flush=True)
            rows.append((px, batch, flops, statistics.median(trainer), statistics.median(bare),
                         1 / statistics.median(ratios)))
    rates.append(common.matmul_rate())
    peak = max(rates)
    print(f"fp32 matmul 4096^2 at the end: {rates[-1] / 1e9:.1f} GFLOP/s; peak used "
          f"{peak / 1e9:.1f} GFLOP/s (best of {len(rates)} measurements); {common.load_average()}")
    print("px   batch  GFLOP/step  trainer s/step  bare s/step  trainer %  bare %  trainer/bare")
    for px, batch, flops, trainer, bare, pairs in rows:
        print(f"{px:<5d}{batch:<7d}{flops / 1e9:>10.1f}{trainer:>16.2f}{bare:>13.2f}"
              f"{100 * flops / trainer / peak:>11.1f}{100 * flops / bare / peak:>8.1f}"
              f"{pairs:>14.3f}")
    px, batch, flops, trainer, bare, pairs = rows[-1]
    print(f"step_efficiency_trainer_pct {100 * flops / trainer / peak:.1f}")


if __name__ == "__main__":
    main()
