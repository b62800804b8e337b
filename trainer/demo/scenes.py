"""Procedural pictures with captions: the demo base model's training data and the demo style.

A scene is one shape of one colour on a plain background at one of five positions, e.g.
"a red circle on a blue background, top left". The base model is pretrained on these; the demo
dataset draws the same shapes in a palette and outline the base never saw (the "demo style"),
so a LoRA trained on it has something visible and measurable to learn. Pure PIL: no torch, so
the GUI and the dataset tools can use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (214, 39, 40), "orange": (247, 140, 27), "yellow": (240, 220, 40),
    "green": (44, 160, 60), "blue": (31, 90, 220), "purple": (128, 60, 170),
    "white": (245, 245, 245), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
# Centre of the shape as a fraction of the image side.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.3, 0.3), "top right": (0.7, 0.3), "center": (0.5, 0.5),
    "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7)}
SHAPE_RADIUS = 0.2  # of the image side; big enough to read at 64 px, small enough for corners

# The demo style: a navy / coral / cream palette and a cream outline. None of these colours is
# in COLOURS, and no pretraining scene has an outline.
STYLE_BACKGROUND: RGB = (29, 53, 87)
STYLE_FILL: RGB = (231, 111, 81)
STYLE_OUTLINE: RGB = (244, 233, 205)
STYLE_PALETTE: tuple[RGB, ...] = (STYLE_BACKGROUND, STYLE_FILL, STYLE_OUTLINE)


@dataclass(frozen=True)
class Scene:
    shape: str
    position: str
    colour: str | None = None  # None: drawn in the demo style
    background: str | None = None

    def caption(self, *, drop: frozenset[str] = frozenset()) -> str:
        """"a red circle on a blue background, top left"; `drop` leaves out any of
        "colour", "background", "position" (pretraining teaches the parts one by one)."""
        if self.colour is None:
            # No trigger word: the base model knows "a circle, top left" (pretraining drops
            # the colour words too), so its picture at LoRA strength 0 is a fair baseline; an
            # unseen word would throw the base off and make the comparison meaningless.
            return f"a {self.shape}, {self.position}"
        text = "a " + ("" if "colour" in drop else f"{self.colour} ") + self.shape
        if "background" not in drop:
            text += f" on a {self.background} background"
        if "position" not in drop:
            text += f", {self.position}"
        return text


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | tuple:
    if shape == "circle" or shape == "square":
        return (cx - r, cy - r, cx + r, cy + r)
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


def draw_shape(size: int, shape: str, position: str, fill: RGB, background: RGB, *,
               outline: RGB | None = None, jitter: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """One shape on a plain background; `jitter` moves the centre (fractions of the side)."""
    fx, fy = POSITIONS[position]
    cx, cy = (fx + jitter[0]) * size, (fy + jitter[1]) * size
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    geometry = _outline(shape, cx, cy, SHAPE_RADIUS * size)
    width = max(1, size // 21) if outline else 0
    if shape == "circle":
        draw.ellipse(geometry, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(geometry, fill=fill, outline=outline, width=width)
    else:
        draw.polygon(geometry, fill=fill, outline=outline, width=width)
    return image


def render(scene: Scene, size: int = 64, jitter: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """The picture a scene's caption describes."""
    if scene.colour is None:
        return draw_shape(size, scene.shape, scene.position, STYLE_FILL, STYLE_BACKGROUND,
                          outline=STYLE_OUTLINE, jitter=jitter)
    return draw_shape(size, scene.shape, scene.position, COLOURS[scene.colour],
                      COLOURS[scene.background], jitter=jitter)


def random_scene(rng: random.Random) -> Scene:
    """A pretraining scene: named colours, shape and background always different."""
    colour, background = rng.sample(sorted(COLOURS), 2)
    return Scene(rng.choice(SHAPES), rng.choice(sorted(POSITIONS)), colour, background)


def style_scenes() -> list[Scene]:
    """Every shape at every position in the demo style (20 scenes)."""
    return [Scene(shape, position) for shape in SHAPES for position in POSITIONS]


# Held out of the demo dataset: the style must carry over to scenes the LoRA never saw.
HELD_OUT = (Scene("circle", "center"), Scene("square", "bottom left"),
            Scene("triangle", "top right"), Scene("diamond", "bottom right"))


def demo_dataset_scenes() -> list[Scene]:
    return [scene for scene in style_scenes() if scene not in HELD_OUT]
