"""What the latent and text-encoder caches save: step time with each cache on and off, and what
building them costs per image.

Cache build: the run's own LatentCache (in memory; on disk cold, then a warm re-read by a new
cache as a second run would do) and TextEmbeddingCache over the dataset, timed per image.
Step time: `trainer.loop.train` with precision.cache_latents and
precision.cache_text_encoder_outputs on / off (median of `--steps` steps after one warm-up,
between `Loss` events); the configurations alternate within each round.

    python bench/caching.py --size tiny               # seconds
    python bench/caching.py --px 256 --rounds 2       # SD 1.5 layout at 256 px

Last line: `uncached_step_ratio X`, the step time with both caches off over both on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common

CONFIGS = {  # name -> (cache_latents, cache_text_encoder_outputs)
    "both cached": (True, True),
    "latents not cached": (False, True),
    "text not cached": (True, False),
    "neither cached": (False, False),
}


def cache_build_times(config, model: Path, root: Path) -> dict[str, float]:
    """Seconds per image of filling each cache the way the loop does."""
    import torch

    from trainer.caching import LatentCache, TextEmbeddingCache
    from trainer.data import base_caption, scan_dataset
    from trainer.models import load_base_model
    from trainer.conditioning import encode_prompts

    report = scan_dataset(config)
    base = load_base_model(model)
    variants = [(item.path, item.bucket, False) for item in report.items]
    n = len(variants)
    background = report.settings.background_color
    times = {}
    start = time.perf_counter()
    LatentCache(base.vae, background=background, disk_dir=None).fill(variants)
    times["latents, memory"] = (time.perf_counter() - start) / n
    start = time.perf_counter()
    LatentCache(base.vae, background=background, disk_dir=root / "latents").fill(variants)
    times["latents, disk (cold: encode + write)"] = (time.perf_counter() - start) / n
    start = time.perf_counter()
    warm = LatentCache(base.vae, background=background, disk_dir=root / "latents")
    warm.fill(variants)
    times["latents, disk (warm: read back)"] = (time.perf_counter() - start) / n
    assert warm.hits == n, f"the warm disk cache missed {n - warm.hits} of {n}"
    start = time.perf_counter()
    with torch.no_grad():
        TextEmbeddingCache(lambda captions: encode_prompts(base, captions)).fill(
            base_caption(item) for item in report.items)
    times[f"text embeddings ({len({base_caption(i) for i in report.items})} captions)"] = (
        time.perf_counter() - start) / n
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15"), default="sd15")
    parser.add_argument("--px", type=int, default=None, help="image side (sd15: 256, tiny: 64)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=1)
    common.add_threads_option(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    px = args.px or (64 if args.size == "tiny" else 256)
    root = Path(tempfile.mkdtemp(prefix="bench-caching-"))
    model = common.base_model(args.size, root)
    data = common.dataset(root, px, count=args.images)
    print(f"{args.size} at {px} px, batch 1, rank 16, {args.images} images, {args.steps} timed "
          f"steps per run, {args.rounds} round(s); {common.machine_line()}")
    base_config = common.bench_config(model, data, px, steps=args.steps + 1)
    for what, seconds in cache_build_times(base_config, model, root).items():
        print(f"cache build, {what}: {seconds * 1000:.0f} ms per image")
    print(common.load_average(), flush=True)
    steps: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for round_index in range(args.rounds):
        for name, (latents, text) in CONFIGS.items():
            config = common.bench_config(model, data, px, steps=args.steps + 1, precision={
                "cache_latents": latents, "cache_text_encoder_outputs": text})
            steps[name].append(statistics.median(common.project_steps(
                config, root / f"run-{round_index}-{latents}-{text}")))
            print(f"round {round_index}, {name}: {steps[name][-1] * 1000:.0f} ms/step; "
                  f"{common.load_average()}", flush=True)
    cached = statistics.median(steps["both cached"])
    for name, values in steps.items():
        median = statistics.median(values)
        print(f"{name:<20s} {median * 1000:8.0f} ms/step  x{median / cached:.3f}")
    print(f"uncached_step_ratio {statistics.median(steps['neither cached']) / cached:.3f}")


if __name__ == "__main__":
    main()
