"""Small generated datasets for tests: coloured shapes with captions, plus broken files."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220),
           "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def shape_image(colour: str, shape: str, background: tuple[int, int, int], size: int = 64,
                seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    margin = rng.randint(size // 8, size // 4)
    box = (margin, margin, size - margin, size - margin)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def make_shapes_dataset(folder: Path, count: int = 12, size: int = 64) -> list[Path]:
    """`count` PNGs with same-stem .txt captions like "a red circle, white background"."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        colour = list(COLOURS)[index % len(COLOURS)]
        shape = SHAPES[(index // len(COLOURS)) % len(SHAPES)]
        path = folder / f"img{index:02d}.png"
        shape_image(colour, shape, (245, 245, 245), size, seed=index).save(path)
        path.with_suffix(".txt").write_text(f"a {colour} {shape}, white background")
        paths.append(path)
    return paths


def add_bad_files(folder: Path) -> dict[str, str]:
    """Four unusable files; returns {file name: a word its skip reason must contain}."""
    (folder / "empty.png").write_bytes(b"")
    (folder / "empty.txt").write_text("an empty file")
    (folder / "notes.png").write_text("this is not an image at all")
    (folder / "notes.txt").write_text("a text file")
    good = folder / "img00.png"
    (folder / "cut.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (folder / "cut.txt").write_text("a truncated image")
    shape_image("red", "circle", (0, 0, 0), size=8).save(folder / "tiny.png")
    (folder / "tiny.txt").write_text("a very small image")
    return {"empty.png": "", "notes.png": "not an image", "cut.png": "truncated",
            "tiny.png": "too small"}
