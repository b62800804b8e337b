"""Pretrain the demo base model (assets/demo/base) from nothing, on procedural shapes.

    python tools/pretrain_demo.py    # 55 min on 2 shared CPU cores (docs/demo.md); seeded

Three phases, each printed as it goes:
1. VAE: built, not trained: an exact colour codec at SD's 8x downsampling (tools/demo_vae.py
   says how, and why).
2. U-Net + text encoder: a denoiser on 64 px scenes, "a red circle on a blue background, top
   left", with caption parts dropped at random so partial prompts work and the empty prompt
   gives classifier-free guidance its unconditional branch.
3. Writes the diffusers folder, the demo dataset (assets/demo/dataset), a grid of the base
   model's samples and the figures (docs/demo/).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.config import LossConfig  # noqa: E402
from trainer.demo import DEMO_BASE, DEMO_DATASET  # noqa: E402
from trainer.demo.dataset import write_demo_dataset  # noqa: E402
from trainer.demo.render import render_grid, sample_scenes  # noqa: E402
from trainer.demo.scenes import COLOURS, POSITIONS, SHAPES, Scene, demo_dataset_scenes, random_scene, render  # noqa: E402
from trainer.demo.style_score import matches_scene  # noqa: E402

from demo_vae import make_colour_codec  # noqa: E402
from trainer.models import load_base_model  # noqa: E402
from trainer.families import get_family  # noqa: E402
from trainer.models.tiny import (  # noqa: E402
    save_diffusers_folder, tiny_text_config, tiny_unet_config, tiny_vae_config, write_random_model)

SD1 = get_family("sd1")
from trainer.conditioning import encode_prompts  # noqa: E402
from trainer.objective import diffusion_loss  # noqa: E402

SIZE = 64
CAPTION_PARTS = ("colour", "background", "position")


def demo_vae_config() -> dict:
    cfg = tiny_vae_config(SD1)
    cfg.update(block_out_channels=[16, 16, 32, 32], norm_num_groups=8)
    return cfg


def to_tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def cosine_lr(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def scene_latents(vae, scenes: list[Scene], rng: random.Random) -> torch.Tensor:
    latents = []
    for start in range(0, len(scenes), 64):
        images = [render(s, SIZE, (rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)))
                  for s in scenes[start:start + 64]]
        latents.append(vae.encode(to_tensor(images)).latent_dist.mean)
    return torch.cat(latents)


def random_caption(scene: Scene, rng: random.Random) -> str:
    if rng.random() < 0.1:
        return ""  # the unconditional branch for classifier-free guidance
    return scene.caption(drop=frozenset(p for p in CAPTION_PARTS if rng.random() < 0.15))


def train_denoiser(base, latents: torch.Tensor, scenes: list[Scene], steps: int, batch: int,
                   rng: random.Random, log) -> list[float]:
    """U-Net and text encoder together; the text encoder learns what the colour words mean."""
    unet, text_encoder = base.unet.train().requires_grad_(True), base.text_encoder.train().requires_grad_(True)
    optimizer = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": 1e-3, "weight_decay": 1e-2},
        # No decay: unused token embeddings (the demo's trigger word) must stay as initialised.
        {"params": text_encoder.parameters(), "lr": 5e-4, "weight_decay": 0.0}])
    # An exponential moving average of the weights is what gets saved: it samples far more
    # cleanly than the last noisy step (as in every diffusion model's training).
    trained = list(unet.parameters()) + list(text_encoder.parameters())
    average = [p.detach().clone() for p in trained]
    peaks = [group["lr"] for group in optimizer.param_groups]
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    loss_config = LossConfig(min_snr_gamma=5.0)  # faster convergence on few steps
    losses = []
    for step in range(steps):
        for group, peak in zip(optimizer.param_groups, peaks):
            group["lr"] = cosine_lr(step, steps, peak)
        pick = [rng.randrange(len(scenes)) for _ in range(batch)]
        context = encode_prompts(base, [random_caption(scenes[i], rng) for i in pick]).context
        loss = diffusion_loss(unet, latents[pick], context, base.noise_scheduler, generator,
                              loss_config, "epsilon")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))  # short warm-up of the average
            torch._foreach_lerp_(average, [p.detach() for p in trained], 1 - decay)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"denoiser step {step + 1}/{steps}: loss {np.mean(losses[-100:]):.4f}")
    with torch.no_grad():
        for parameter, value in zip(trained, average):
            parameter.copy_(value)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return losses


def evaluation_scenes(count: int, seed: int) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_BASE)
    parser.add_argument("--dataset", type=Path, default=DEMO_DATASET)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "demo")
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--scenes", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="1 is fastest for these small networks, and on a shared CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    rng = random.Random(args.seed)
    # Start from the project's tiny random SD 1.x model with a slimmer VAE, then train it.
    write_random_model(args.out, SD1, tiny_unet_config(SD1), demo_vae_config(),
                       {"text_encoder": tiny_text_config(SD1)}, seed=args.seed)
    base = load_base_model(args.out)
    make_colour_codec(base.vae, smooth_last=3)

    scenes = [random_scene(rng) for _ in range(args.scenes)]
    latents = scene_latents(base.vae, scenes, rng)
    # Like SD's 0.18215: the factor that gives the denoiser latents of unit spread.
    scaling = round(1.0 / float(latents.std()), 5)
    base.vae.register_to_config(scaling_factor=scaling)
    log(f"encoded {len(scenes)} scenes; latent scaling factor {scaling}")
    unet_losses = train_denoiser(base, latents * scaling, scenes, args.unet_steps, 32, rng, log)

    save_diffusers_folder(args.out, SD1, base.unet, base.vae, {"text_encoder": base.text_encoder})
    train_time = time.perf_counter() - started
    log(f"saved {args.out}")

    write_demo_dataset(args.dataset)
    args.docs.mkdir(parents=True, exist_ok=True)
    originals = [render(scene) for scene in evaluation_scenes(8, seed=7)]
    originals += [render(scene) for scene in demo_dataset_scenes()[:4]]
    with torch.no_grad():
        decoded = base.vae.decode(base.vae.encode(to_tensor(originals)).latent_dist.mean).sample
    recon = [Image.fromarray(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
             for x in decoded]
    vae_l1 = float((decoded - to_tensor(originals)).abs().mean())
    render_grid(originals + recon, columns=len(originals)).save(args.docs / "vae-reconstructions.png")
    held = evaluation_scenes(48, seed=1000 + args.seed)
    images = sample_scenes(args.out, [s.caption() for s in held], seeds=range(len(held)))
    accuracy = float(np.mean([matches_scene(image, scene) for image, scene in zip(images, held)]))
    render_grid(images[:24], columns=8).save(args.docs / "base-samples.png")
    figures = {
        "seed": args.seed, "unet_steps": args.unet_steps, "scenes": args.scenes,
        "train_minutes": round(train_time / 60, 2),
        "denoiser_loss_first_100": round(float(np.mean(unet_losses[:100])), 4),
        "denoiser_loss_last_100": round(float(np.mean(unet_losses[-100:])), 4),
        "latent_scaling_factor": scaling, "vae_l1_full_pictures": round(vae_l1, 4),
        "prompt_accuracy": accuracy, "prompt_accuracy_samples": len(held),
        "captions_shown": [s.caption() for s in held[:24]],
        "vocabulary": {"shapes": list(SHAPES), "colours": list(COLOURS), "positions": list(POSITIONS)},
    }
    (args.docs / "pretrain.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    log(f"prompt accuracy {accuracy:.2f} on {len(held)} held-out captions; figures in {args.docs}")
    print(f"demo_base_prompt_accuracy {accuracy:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
