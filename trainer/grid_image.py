"""The comparison grid as one PNG: pictures in rows (prompt x checkpoint) and columns
(strength), every row and column labelled, the settings written under it and kept in the
file's text chunk (`lora_studio_grid`), so a shared sheet says how it was made."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from trainer.atomic import atomic_write

BACKGROUND, INK = (255, 255, 255), (20, 20, 20)
FONT_SIZE, GAP = 14, 4


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)  # Pillow's own font: the same everywhere


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw, font) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + ([line] if line else [])


def compose(cells: list[list[Path]], row_labels: list[str], column_labels: list[str],
            settings: str) -> Image.Image:
    """`cells[row][column]` are PNG files of one size; labels on the left and top, `settings`
    at the foot."""
    images = [[Image.open(path).convert("RGB") for path in row] for row in cells]
    width, height = images[0][0].size
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(160, min(320, width))
    wrapped = [_wrap(label, label_width - 2 * GAP, probe, font) for label in row_labels]
    line = FONT_SIZE + 4
    top = line + 2 * GAP
    rows = len(images)
    # a column is as wide as its picture or its label, whichever is wider
    column = max([width] + [int(probe.textlength(label, font=font)) + 2 * GAP
                            for label in column_labels]) + GAP
    heights = [max(height, len(w) * line + 2 * GAP) for w in wrapped]
    footer = _wrap(settings, label_width + len(column_labels) * column, probe, font)
    sheet = Image.new("RGB", (label_width + len(column_labels) * column,
                              top + sum(heights) + rows * GAP + len(footer) * line + 2 * GAP),
                      BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, label in enumerate(column_labels):
        draw.text((label_width + index * column + GAP, GAP), label, fill=INK, font=font)
    y = top
    for row, pictures in enumerate(images):
        for number, text in enumerate(wrapped[row]):
            draw.text((GAP, y + GAP + number * line), text, fill=INK, font=font)
        for index, picture in enumerate(pictures):
            sheet.paste(picture, (label_width + index * column + (column - GAP - width) // 2, y))
        y += heights[row] + GAP
    for number, text in enumerate(footer):
        draw.text((GAP, y + GAP + number * line), text, fill=INK, font=font)
    return sheet


def save_sheet(sheet: Image.Image, path: Path, labels: dict) -> Path:
    """Write the sheet atomically with its labels and settings in a PNG text chunk."""
    info = PngInfo()
    info.add_text("lora_studio_grid", json.dumps(labels))
    return atomic_write(Path(path), lambda tmp: sheet.save(tmp, format="PNG", pnginfo=info))
