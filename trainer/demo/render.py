"""Rendering captions with a base model (and optionally a LoRA), and laying pictures out."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

from PIL import Image

from trainer.sampling import PreviewRenderer, PromptSpec

SIZE = 64
STEPS = 20
GUIDANCE = 5.0


def spec_for(caption: str, seed: int) -> PromptSpec:
    return PromptSpec(prompt=caption, width=SIZE, height=SIZE, steps=STEPS, scale=GUIDANCE, seed=seed)


def render_captions(renderer: PreviewRenderer, captions: list[str], seeds: Iterable[int],
                    strength: float = 1.0) -> list[Image.Image]:
    return [Image.open(io.BytesIO(renderer.render(spec_for(caption, seed), strength))).convert("RGB")
            for caption, seed in zip(captions, seeds)]


def sample_scenes(model_dir: Path, captions: list[str], seeds: Iterable[int]) -> list[Image.Image]:
    """The base model alone, one picture per caption."""
    from trainer.models import load_base_model

    renderer = PreviewRenderer(load_base_model(model_dir), None, baseline=False)
    return render_captions(renderer, captions, seeds)


def render_grid(images: list[Image.Image], columns: int, scale: int = 2, gap: int = 2) -> Image.Image:
    """Pictures in rows of `columns`, enlarged `scale` times (nearest: pixels stay visible)."""
    if not images:
        raise ValueError("render_grid needs at least one picture")
    side = images[0].width * scale
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * (side + gap) - gap, rows * (side + gap) - gap), (255, 255, 255))
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid.paste(image.resize((side, side), Image.NEAREST), (column * (side + gap), row * (side + gap)))
    return grid
