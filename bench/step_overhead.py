"""The project's training step against a bare reference loop, in one process, same tensors.

A = `trainer.loop.train` (cached latents and text embeddings, optimizer, scheduler, event log,
    everything a run does per step), timed between consecutive `Loss` events.
B = the bare loop: the same U-Net with the same peft LoRA, noise + timesteps, forward, MSE,
    backward, AdamW step; nothing else.
Rounds alternate A B A B after a warm-up; the headline is the median of per-round ratios A/B.

    python bench/step_overhead.py --size tiny            # seconds
    python bench/step_overhead.py --size sd15 --px 256   # the real SD 1.5 layout, random weights

Last line: `step_overhead_ratio X`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from synthetic import make_shapes_dataset  # noqa: E402
from trainer.config_io import build_config, load_config_data, merge, preset_path  # noqa: E402
from trainer.events import Loss  # noqa: E402
from trainer.loop import train  # noqa: E402
from trainer.models import load_base_model, make_tiny_model  # noqa: E402
from trainer.models.tiny import make_sd15_random_model  # noqa: E402
from trainer.network import apply_lora  # noqa: E402


def project_steps(config, run_dir: Path) -> list[float]:
    """Seconds per step of a real run (between Loss events; the first step is dropped)."""
    stamps: list[float] = []
    train(config, run_dir, emit=lambda e: stamps.append(time.perf_counter())
          if isinstance(e, Loss) else None)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def bare_steps(model_path: Path, config, steps: int, latent_side: int) -> list[float]:
    """The reference: nothing but the maths of a LoRA step."""
    base = load_base_model(model_path)
    torch.manual_seed(0)
    network = apply_lora(base.unet, None, config.network)
    base.unet.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.optimizer.learning_rate)
    scheduler = base.noise_scheduler
    batch = config.dataset.batch_size
    latents = torch.randn(batch, 4, latent_side, latent_side)
    context = torch.randn(batch, 77, base.unet.config.cross_attention_dim)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,))
        prediction = base.unet(scheduler.add_noise(latents, noise, t), t, context).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:]


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
    model = root / "model"
    if args.size == "tiny":
        make_tiny_model(model)
    else:
        make_sd15_random_model(model)
    make_shapes_dataset(root / "data", 8, size=px)
    job = merge(load_config_data(preset_path("tiny-cpu")), {
        "model": {"path": str(model)}, "dataset": {"folders": [{"path": str(root / "data")}],
                                                   "resolution": px, "max_bucket_reso": px},
        "network": {"rank": 16, "alpha": 16.0},
        "schedule": {"max_train_steps": steps + 1},
        "precision": {"threads": torch.get_num_threads()},
        "output": {"verify": False}})
    config = build_config(job)
    print(f"{args.size} at {px} px, batch {config.dataset.batch_size}, rank 16, "
          f"{torch.get_num_threads()} threads, {steps} timed steps per round")
    bare_steps(model, config, 2, px // 8)  # warm-up
    ratios = []
    for round_index in range(args.rounds):
        a = statistics.median(project_steps(config, root / f"run{round_index}"))
        b = statistics.median(bare_steps(model, config, steps, px // 8))
        ratios.append(a / b)
        print(f"round {round_index}: project {a * 1000:.1f} ms/step, bare {b * 1000:.1f} ms/step, "
              f"ratio {a / b:.3f}")
    print(f"step_overhead_ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
