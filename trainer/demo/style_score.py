"""The demo's style score: how far a picture's colours are from the demo palette.

For every pixel, the distance (RGB, scaled to 0..1, so at most sqrt(3)) to the nearest of the
palette's colours, averaged over the picture. A picture drawn in the demo style scores near 0;
the base model's red-on-blue shapes score around 0.3. No torch: PIL and numpy only.
"""

from __future__ import annotations

import io
from statistics import mean

import numpy as np
from PIL import Image

from trainer.demo.scenes import COLOURS, HELD_OUT, POSITIONS, STYLE_PALETTE, Scene


def palette_distance(image: Image.Image | bytes,
                     palette: tuple[tuple[int, int, int], ...] = STYLE_PALETTE) -> float:
    """Mean over pixels of the distance to the nearest palette colour (0 = only palette colours)."""
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 1, 3) / 255.0
    colours = np.asarray(palette, dtype=np.float32).reshape(1, -1, 3) / 255.0
    nearest = np.sqrt(((pixels - colours) ** 2).sum(axis=2)).min(axis=1)
    return float(nearest.mean())


def held_out_prompts(seeds: tuple[int, ...] = (11, 22, 33)) -> list[tuple[Scene, int]]:
    """The scenes left out of the demo dataset, each at a few sampling seeds."""
    return [(scene, seed) for scene in HELD_OUT for seed in seeds]


def improvement(baseline: list[float], trained: list[float]) -> float:
    """How much closer to the palette the trained pictures are: 1 - trained/baseline means."""
    if not baseline or len(baseline) != len(trained):
        raise ValueError(f"need paired scores, got {len(baseline)} baseline and "
                         f"{len(trained)} trained")
    return 1.0 - mean(trained) / mean(baseline)


def _nearest_colour(image: Image.Image, fx: float, fy: float) -> str:
    """The named colour nearest to the mean of a small patch at (fx, fy) of the picture."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = pixels.shape[:2]
    y, x = int(fy * h), int(fx * w)
    patch = pixels[max(0, y - 2):y + 3, max(0, x - 2):x + 3].reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: float(((patch - np.asarray(COLOURS[name])) ** 2).sum()))


def matches_scene(image: Image.Image, scene: Scene) -> bool:
    """Does a generated picture show what a pretraining caption asked for: the shape's colour
    at the named position and the background colour in the far corner?"""
    fx, fy = POSITIONS[scene.position]
    corner = tuple(0.1 if f >= 0.5 else 0.9 for f in (fx, fy))  # clear of the shape
    return (_nearest_colour(image, fx, fy) == scene.colour
            and _nearest_colour(image, *corner) == scene.background)
