"""The project's training step against a bare reference step, alternating step by step in one
real run on the very same U-Net and LoRA tensors.

A = a step of `trainer.loop.train` (cached latents and text embeddings, optimizer, scheduler,
    clipping, event log: everything a run does per step).
B = the bare step: noise + timesteps, forward, MSE, backward, AdamW step; nothing else. It runs
    from the loop's `on_step` hook after every A (bench/common.py: `interleaved_steps`).
After one warm-up step of each, the steps run A B A B ... A, so both see the same load; each B
is compared with the mean of the A just before and the A just after it, and the headline is
the median of those ratios over all rounds.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--px", type=int, default=None, help="image side (tiny: 64, sd15: 256)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed bare steps per round (one more trainer step)")
    parser.add_argument("--rounds", type=int, default=3, help="runs (a model load each)")
    common.add_threads_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    px = args.px or (64 if args.size == "tiny" else 256)
    steps = args.steps or (40 if args.size == "tiny" else 4)
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model = common.base_model(args.size, root)
    config = common.bench_config(model, common.dataset(root, px), px, steps=steps + 2)
    print(f"{args.size} at {px} px, batch {config.dataset.batch_size}, rank 16, "
          f"{steps} timed bare steps (and {steps + 1} trainer steps) per round; "
          f"{common.machine_line()}")
    ratios = []
    for round_index in range(args.rounds):
        a, b = common.interleaved_steps(config, root / f"run{round_index}")
        pairs = common.bracketed_ratios(a, b)
        ratios += pairs
        print(f"round {round_index}: project {statistics.median(a) * 1000:.1f} ms/step, bare "
              f"{statistics.median(b) * 1000:.1f} ms/step, ratios "
              f"{' '.join(f'{r:.3f}' for r in pairs)}; "
              f"{common.load_average()}", flush=True)
    print(f"ratios {len(ratios)}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    print(f"step_overhead_ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
