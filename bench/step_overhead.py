"""The project's training step against a bare reference loop, in one process, same tensors.

A = `trainer.loop.train` (cached latents and text embeddings, optimizer, scheduler, event log,
    everything a run does per step), timed between consecutive `Loss` events.
B = the bare loop: the same U-Net with the same peft LoRA, noise + timesteps, forward, MSE,
    backward, AdamW step; nothing else.
Rounds alternate A B A B after a warm-up; the headline is the median of per-round ratios A/B.

    python bench/step_overhead.py --size tiny                      # seconds
    python bench/step_overhead.py --size sd15 --px 256 --rounds 5  # the real SD 1.5 layout

Last line: `step_overhead_ratio X`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import common
from common import bare_steps, bench_config, project_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--px", type=int, default=None, help="image side (tiny: 64, sd15: 256)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    px = args.px or (64 if args.size == "tiny" else 256)
    steps = args.steps or (40 if args.size == "tiny" else 4)
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model = common.base_model(args.size, root)
    config = bench_config(model, common.dataset(root, px), px, steps=steps + 1)
    print(f"{args.size} at {px} px, batch {config.dataset.batch_size}, rank 16, "
          f"{steps} timed steps per round; {common.machine_line()}")
    bare_steps(model, config, 2, px // 8)  # warm-up
    ratios = []
    for round_index in range(args.rounds):
        a = statistics.median(project_steps(config, root / f"run{round_index}"))
        b = statistics.median(bare_steps(model, config, steps, px // 8))
        ratios.append(a / b)
        print(f"round {round_index}: project {a * 1000:.1f} ms/step, bare {b * 1000:.1f} ms/step, "
              f"ratio {a / b:.3f}; {common.load_average()}", flush=True)
    print(f"step_overhead_ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
