"""Peak resident memory (CPU) of a real training run, with and without gradient checkpointing.

Each configuration runs `trainer.loop.train` (cached latents and text embeddings, AdamW, 2 steps
by default, checkpoint and export at the end) in a fresh child process, so no run inherits
another's heap. The child reads its own /proc/self/status: VmRSS and VmHWM (peak) when the loop
starts (model loaded, caches filled, optimizer built), then resets the peak (clear_refs 5) and
reads VmHWM again after the run: the peak of the steps themselves.

    python bench/memory.py --size tiny                  # seconds
    python bench/memory.py --px 256 512                 # SD 1.5 layout, batch 1, GC off / on
    python bench/memory.py --px 256 --batch 1 4

Last line: `peak_rss_gib X`, the largest peak of a run without gradient checkpointing at the
largest size measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import common

GIB = 2**30


def child(args: argparse.Namespace) -> None:
    from trainer.events import Started
    from trainer.loop import train

    root = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    model = common.base_model(args.size, root)
    data = common.dataset(root, args.px[0], count=max(2, args.batch[0]))
    config = common.bench_config(model, data, args.px[0], steps=args.steps, batch=args.batch[0],
                                 precision={"gradient_checkpointing": args.checkpointing})
    marks: dict[str, int] = {}

    def on_event(event) -> None:
        if isinstance(event, Started):
            marks["rss_at_loop"] = common.proc_status_bytes("VmRSS")
            marks["peak_before_loop"] = common.proc_status_bytes("VmHWM")
            Path("/proc/self/clear_refs").write_text("5")  # peak := now

    train(config, root / "run", emit=on_event)
    marks["peak_in_loop"] = common.proc_status_bytes("VmHWM")
    print(json.dumps(marks))


def measure(size: str, px: int, batch: int, checkpointing: bool, steps: int) -> dict[str, int]:
    command = [sys.executable, __file__, "--child", "--size", size, "--px", str(px),
               "--batch", str(batch), "--steps", str(steps)]
    done = subprocess.run(command + (["--checkpointing"] if checkpointing else []),
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="sd15")
    parser.add_argument("--px", type=int, nargs="+", default=None,
                        help="image sides (sd15: 256 512; tiny: 64)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.px = args.px or ([64] if args.size == "tiny" else [256, 512])
    if args.child:
        return child(args)
    print(f"{args.size}, rank 16, {args.steps} steps per run; {common.machine_line()}")
    print("px  batch  checkpointing  RSS at loop start  peak before loop  peak in loop  "
          "step adds")
    worst = 0.0
    for px in args.px:
        for batch in args.batch:
            for checkpointing in (False, True):
                m = measure(args.size, px, batch, checkpointing, args.steps)
                print(f"{px:<4d}{batch:<7d}{'on' if checkpointing else 'off':<15s}"
                      f"{m['rss_at_loop'] / GIB:>13.2f} GiB{m['peak_before_loop'] / GIB:>13.2f} "
                      f"GiB{m['peak_in_loop'] / GIB:>10.2f} GiB"
                      f"{(m['peak_in_loop'] - m['rss_at_loop']) / GIB:>7.2f} GiB; "
                      f"{common.load_average()}", flush=True)
                if not checkpointing and px == max(args.px):
                    worst = max(worst, m["peak_in_loop"], m["peak_before_loop"])
    print(f"peak_rss_gib {worst / GIB:.2f}")


if __name__ == "__main__":
    main()
