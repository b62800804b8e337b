"""A WD14-style tagger: an ONNX image classifier and its `selected_tags.csv`, through onnxruntime.

This is the model family of SmilingWolf's wd-v1-4-* and wd-*-tagger-v3 (what kohya's
`tag_images_by_wd14_tagger.py` runs): the input is one NHWC float32 image in BGR order with
values 0..255, padded to a square on white and resized to the model's side; the output is one
probability per row of the CSV (`tag_id,name,category,count`; category 0 is a general tag,
4 a character, 9 a rating). Tags above their group's threshold are kept, most confident
first, with underscores turned to spaces (not in kaomoji like `^_^`); ratings are left out.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.captioning import CaptionModelError

GENERAL, CHARACTER, RATING = 0, 4, 9
TAGS_FILE = "selected_tags.csv"
# Tags whose underscore is part of the face, kept as written (kohya's list).
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<",
                     "3_3", "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})


@dataclass(frozen=True)
class TaggerSettings:
    """Which tags are written: WD14's usual thresholds, and tags never to write."""

    general_threshold: float = 0.35
    character_threshold: float = 0.85
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("general_threshold", "character_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise CaptionModelError(f"{name} must be between 0 and 1, got {value}")


def tag_text(name: str) -> str:
    return name if name in KAOMOJI else name.replace("_", " ")


def _same_tag(tag: str) -> str:
    return tag_text(tag.strip()).lower()


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


def read_tags(path: Path) -> list[Tag]:
    """The rows of a `selected_tags.csv`; a clear error naming the file when it isn't one."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise CaptionModelError(f"{path} is missing: a WD14 tagger needs its {TAGS_FILE} "
                                "beside the .onnx file (download both together)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CaptionModelError(f"{path} could not be read ({error})") from None
    try:
        tags = [Tag(row["name"], int(row["category"])) for row in rows]
    except (KeyError, TypeError, ValueError):
        raise CaptionModelError(f"{path} is not a WD14 tag list: it needs the columns "
                                "tag_id,name,category,count") from None
    if not tags:
        raise CaptionModelError(f"{path} lists no tags")
    return tags


def square_pixels(image: Image.Image, side: int) -> np.ndarray:
    """(side, side, 3) float32 BGR 0..255: the image centred on a white square, resized."""
    rgb = image.convert("RGB")
    square = max(rgb.size)
    canvas = Image.new("RGB", (square, square), (255, 255, 255))
    canvas.paste(rgb, ((square - rgb.width) // 2, (square - rgb.height) // 2))
    if square != side:
        canvas = canvas.resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(canvas, dtype=np.float32)[:, :, ::-1].copy()


class Wd14Tagger:
    """Tags one image at a time; `caption(image)` -> "tag, tag, ..."."""

    def __init__(self, onnx_file: Path, tags_file: Path | None = None,
                 settings: TaggerSettings = TaggerSettings()) -> None:
        import onnxruntime

        self.onnx_file = Path(onnx_file)
        self.tags = read_tags(Path(tags_file) if tags_file else self.onnx_file.parent / TAGS_FILE)
        self.settings = settings
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its warnings would tear the progress output apart
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.onnx_file), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own classes for each kind of damage
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CaptionModelError(f"{self.onnx_file} is not a usable ONNX model "
                                    f"({type(error).__name__}: {first_line[:200]})") from None
        model_input = self.session.get_inputs()[0]
        shape = list(model_input.shape)
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise CaptionModelError(f"{self.onnx_file} takes input {shape}; a WD14 tagger takes "
                                    "one image as [batch, height, width, 3]")
        self.channels_first = shape[1] == 3
        side = shape[2]
        self.side = side if isinstance(side, int) and side > 0 else 448
        self.input_name = model_input.name
        outputs = self.session.get_outputs()[0].shape
        if isinstance(outputs[-1], int) and outputs[-1] != len(self.tags):
            raise CaptionModelError(
                f"{self.onnx_file} scores {outputs[-1]} tags but its tag list has "
                f"{len(self.tags)}: they are from different taggers")
        self._excluded = {_same_tag(tag) for tag in settings.exclude}

    def scores(self, image: Image.Image) -> np.ndarray:
        pixels = square_pixels(image, self.side)[None]
        if self.channels_first:
            pixels = pixels.transpose(0, 3, 1, 2)
        return np.asarray(self.session.run(None, {self.input_name: pixels})[0][0],
                          dtype=np.float64)

    def caption(self, image: Image.Image) -> str:
        scores = self.scores(image)
        thresholds = {GENERAL: self.settings.general_threshold,
                      CHARACTER: self.settings.character_threshold}
        kept = [(score, tag_text(tag.name)) for tag, score in zip(self.tags, scores)
                if tag.category in thresholds and score >= thresholds[tag.category]
                and _same_tag(tag.name) not in self._excluded]
        kept.sort(key=lambda pair: (-pair[0], pair[1]))
        return ", ".join(name for _, name in kept)
