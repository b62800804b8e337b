"""Opening images: a fast health check for the scan, RGB loading, and bucket crops.

`probe_image` reads the header for the size and EXIF orientation, then decodes the pixel data
to catch truncated files - JPEGs in libjpeg's 1/8-scale draft mode, which still reads every
byte but skips most of the work. A file above Pillow's MAX_IMAGE_PIXELS is never decoded.

torch is imported only inside `image_to_tensor`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

ORIENTATION_TAG = 0x0112
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # rotated by 90 or 270 degrees


@dataclass(frozen=True)
class Probe:
    """The outcome of checking one image file: a size, or the reason it cannot be used."""

    width: int = 0
    height: int = 0
    reason: str = ""
    # (lowest, highest) alpha value when asked for and the image has transparency (masks)
    alpha_range: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return not self.reason


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} megapixels"


def probe_image(path: Path | str, alpha: bool = False) -> Probe:
    """Size after EXIF rotation, or a plain-words reason why the file cannot be used; with
    `alpha`, also the range of its alpha channel (read from the pixels decoded anyway).

    Never raises for a bad file. Callers that scan many files in threads should silence
    `Image.DecompressionBombWarning` around the whole scan; the limit is checked here.
    """
    path = Path(path)
    try:
        if os.stat(path).st_size == 0:
            return Probe(reason="empty file (0 bytes)")
        with Image.open(path) as image:
            width, height = image.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and width * height > limit:
                return Probe(reason=f"too large: {width}x{height} pixels is over Pillow's safety "
                                    f"limit of {_megapixels(limit)} (possible decompression bomb)")
            try:
                orientation = image.getexif().get(ORIENTATION_TAG, 1)
            except Exception:  # a broken EXIF block does not make the pixels unusable
                orientation = 1
            if image.format in ("JPEG", "MPO"):
                image.draft(None, (max(1, width // 8), max(1, height // 8)))
            image.load()
            channel = alpha_channel(image) if alpha else None
            alpha_range = channel.getextrema() if channel is not None else None
    except PermissionError:
        return Probe(reason="unreadable (permission denied)")
    except FileNotFoundError:
        return Probe(reason="file disappeared or is a broken link")
    except Image.DecompressionBombError:
        limit = Image.MAX_IMAGE_PIXELS or 0
        return Probe(reason=f"too large: over twice Pillow's safety limit of {_megapixels(limit)} "
                            "(possible decompression bomb); not opened")
    except UnidentifiedImageError:
        return Probe(reason="not an image (Pillow cannot identify the file's contents)")
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as error:
        text = str(error) or type(error).__name__
        if "truncated" in text.lower():
            return Probe(reason="truncated (the file ends before the image data does)")
        return Probe(reason=f"corrupt image data ({text})")
    except MemoryError:
        return Probe(reason="too large to decode in memory")
    if orientation in SWAPPING_ORIENTATIONS:
        width, height = height, width
    return Probe(width=width, height=height, alpha_range=alpha_range)


def _sixteen_bit_to_8(image: Image.Image) -> Image.Image:
    """I;16 / I (16-bit range) -> L, scaling 0..65535 to 0..255 (Pillow's convert would clip)."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":  # float: 0..1 or 0..255
        array = array * (255.0 if array.max(initial=0.0) <= 1.0 else 1.0)
    else:
        array = array / 257.0
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), "L")


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def has_alpha(image: Image.Image) -> bool:
    """Transparency that `to_rgb` flattens: an alpha band or a transparent colour. 16-bit and
    float greys lose theirs on the way to 8 bits, so they count as opaque."""
    return image.mode not in SIXTEEN_BIT_MODES and (
        image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info)


def alpha_channel(image: Image.Image) -> Image.Image | None:
    """The transparency as an 8-bit L image (255 = opaque), or None when there is none."""
    if not has_alpha(image):
        return None
    return (image if image.mode in ("RGBA", "LA") else image.convert("RGBA")).getchannel("A")


def to_rgb(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is flattened on `background`; 16-bit greys are scaled,
    not clipped; CMYK and palettes are converted."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_8(image)
    if has_alpha(image):
        rgba = image.convert("RGBA")
        colour = ImageColor.getrgb(background)[:3]
        flat = Image.new("RGBA", rgba.size, (*colour, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    if image.mode == "1":
        image = image.convert("L")
    return image.convert("RGB")


def open_upright(path: Path | str) -> Image.Image:
    """An image file decoded in its own mode (alpha kept), upright (EXIF orientation applied)."""
    with Image.open(path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
    return upright if upright is not None else image


def load_image(path: Path | str, background: str = "#ffffff") -> Image.Image:
    """An image file as RGB, upright (EXIF orientation applied), transparency on `background`."""
    return to_rgb(open_upright(path), background)


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Resize (LANCZOS, keeping the aspect ratio) so the image covers `bucket`, then centre-crop
    to exactly the bucket. Returns the crop and its (top, left) in the resized image."""
    bucket_w, bucket_h = bucket
    width, height = image.size
    scale = max(bucket_w / width, bucket_h / height)
    resized_w = max(bucket_w, int(width * scale + 0.5))
    resized_h = max(bucket_h, int(height * scale + 0.5))
    if (resized_w, resized_h) != (width, height):
        image = image.resize((resized_w, resized_h), Image.Resampling.LANCZOS)
    left = (resized_w - bucket_w) // 2
    top = (resized_h - bucket_h) // 2
    if (resized_w, resized_h) != (bucket_w, bucket_h):
        image = image.crop((left, top, left + bucket_w, top + bucket_h))
    return image, (top, left)


def image_to_array(image: Image.Image, bucket: tuple[int, int],
                   flip: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """HWC float32 in [-1, 1] at bucket size, and the crop's (top, left). With `flip` the image
    is mirrored and `left` is measured from the other side (what SDXL's crop conditioning wants)."""
    crop, (top, left) = fit_to_bucket(image, bucket)
    scale = max(bucket[0] / image.width, bucket[1] / image.height)
    resized_w = max(bucket[0], int(image.width * scale + 0.5))
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = resized_w - (left + bucket[0])
    array = np.asarray(crop.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return array, (top, left)


def image_to_tensor(image: Image.Image, bucket: tuple[int, int], flip: bool = False):
    """(CHW float32 tensor in [-1, 1] of exactly bucket size, crop (top, left))."""
    import torch  # the one place trainer.data touches torch

    array, crop_top_left = image_to_array(image, bucket, flip)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), crop_top_left
