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
    python bench/step_overhead.py --size sdxl --px 512 --rounds 1  # the real SDXL layout

`--size sdxl` builds (once, cached) one fp16 single file of the real SDXL layout with random
weights (bench/common.py: `sdxl_model`); the trainer loads it in fp32 like any user's file. A
CPU step of it at 512 px takes ~23 s on a quiet machine (2-3 minutes with other jobs on the
2 cores), so it runs 4 timed pairs a round (about 6 minutes quiet, 25 loaded), gradient
checkpointing on (`--checkpointing`), and prints every step as it goes.

Every round also prints the process's peak resident memory (VmHWM). Last line:
`step_overhead_ratio X`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15", "sdxl"), default="tiny")
    parser.add_argument("--px", type=int, default=None,
                        help="image side (tiny: 64, sd15: 256, sdxl: 512)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed bare steps per round (one more trainer step; "
                             "tiny: 40, sd15: 4, sdxl: 4)")
    parser.add_argument("--rounds", type=int, default=3, help="runs (a model load each)")
    parser.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto",
                        help="gradient checkpointing (auto: on for sdxl, off otherwise)")
    common.add_threads_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    px = args.px or {"tiny": 64, "sd15": 256, "sdxl": 512}[args.size]
    steps = args.steps or {"tiny": 40, "sd15": 4, "sdxl": 4}[args.size]
    checkpointing = (args.checkpointing == "on"
                     or (args.checkpointing == "auto" and args.size == "sdxl"))
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model = common.base_model(args.size, root)
    # SDXL: 4 images, not 8 (each costs a 512 px VAE encode while the latents are cached)
    data = common.dataset(root, px, 4 if args.size == "sdxl" else 8)
    config = common.bench_config(model, data, px, steps=steps + 2,
                                 precision={"gradient_checkpointing": checkpointing})
    print(f"{args.size} at {px} px, batch {config.dataset.batch_size}, rank 16, "
          f"gradient checkpointing {'on' if checkpointing else 'off'}, "
          f"{steps} timed bare steps (and {steps + 1} trainer steps) per round; "
          f"{common.machine_line()}", flush=True)
    log = (lambda line: print(line, flush=True)) if args.size == "sdxl" else None
    ratios = []
    for round_index in range(args.rounds):
        start = time.perf_counter()
        a, b = common.interleaved_steps(config, root / f"run{round_index}", log=log)
        pairs = common.bracketed_ratios(a, b)
        ratios += pairs
        print(f"round {round_index}: project {statistics.median(a) * 1000:.1f} ms/step, bare "
              f"{statistics.median(b) * 1000:.1f} ms/step, ratios "
              f"{' '.join(f'{r:.3f}' for r in pairs)}; "
              f"{common.load_average()}; round {time.perf_counter() - start:.0f} s; "
              f"{common.peak_rss_line()}", flush=True)
    print(f"ratios {len(ratios)}, min {min(ratios):.3f}, max {max(ratios):.3f}; "
          f"gradient checkpointing {'on' if checkpointing else 'off'}; {common.peak_rss_line()}")
    print(f"step_overhead_ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
