"""Masks for the masked loss (`dataset.masked_loss`): the scan's check of each image's mask, and
the mask shaped exactly like its image on the latent grid.

Where a mask comes from (trainer.mask_files has the file rule): the same-stem file in the
folder's `mask_folder`, read as greyscale (white = trained, black = ignored, greys in between;
transparent pixels of a mask file count as black); else the image's own alpha channel; else
none, and the image trains whole. A mask that is white everywhere is no mask: the loss is then
today's to the bit.

Geometry: the mask goes through the image's own `fit_to_bucket` (the same resize and centre
crop, in 8 bits as the pixels are), the same horizontal flip, then an area average down to the
latent's H x W. Pure Pillow + numpy; torch is imported only inside `latent_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.data.images import (Probe, alpha_channel, fit_to_bucket, has_alpha, open_upright,
                                 probe_image, to_rgb)

ASPECT_TOLERANCE = 0.01  # a mask of another shape than its image was drawn for another image


@dataclass(frozen=True)
class MaskSource:
    """Where an image's mask comes from: a mask file, or (file None) the image's alpha."""

    file: Path | None = None

    @property
    def kind(self) -> str:
        return "alpha" if self.file is None else "mask_file"


@dataclass(frozen=True)
class MaskCheck:
    """The scan's verdict on one image's mask: its source (None: trains whole), or a problem
    that keeps the image out of training, plus notes that do not."""

    source: MaskSource | None = None
    problem: str = ""
    notes: tuple[str, ...] = ()


def read_mask_file(path: Path) -> Image.Image:
    """A mask file as an upright 8-bit L image (16-bit greys scaled, transparency on black)."""
    image = open_upright(path)
    if image.mode == "L" and not has_alpha(image):
        return image
    return to_rgb(image, "#000000").convert("L")


def mask_at_image_size(source: MaskSource, upright: Image.Image) -> Image.Image:
    """The mask as an L image of exactly the (upright) image's size; 255 = trained."""
    if source.file is None:
        return alpha_channel(upright) or Image.new("L", upright.size, 255)
    mask = read_mask_file(source.file)
    if mask.size != upright.size:  # a half-size mask is fine; the scan notes another shape
        mask = mask.resize(upright.size, Image.Resampling.LANCZOS)
    return mask


def area_average(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) -> grid (h, w), each cell the mean of the pixels it covers. Buckets are whole
    multiples of the VAE's factor, so this is a block mean (exact: ones stay 1.0)."""
    height, width = values.shape
    rows, cols = grid
    if height % rows == 0 and width % cols == 0:
        return values.reshape(rows, height // rows, cols, width // cols).mean(axis=(1, 3))
    return np.asarray(Image.fromarray(values, "F").resize((cols, rows), Image.Resampling.BOX))


def mask_to_grid(mask: Image.Image, bucket: tuple[int, int], flip: bool,
                 grid: tuple[int, int]) -> np.ndarray:
    """An image-sized L mask -> float32 (h, w) in [0, 1] on the latent grid, cropped and
    flipped exactly as `image_to_array` crops and flips the pixels."""
    crop, _ = fit_to_bucket(mask, bucket)
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    values = np.asarray(crop, dtype=np.float32) / 255.0
    return np.clip(area_average(values, grid), 0.0, 1.0).astype(np.float32)


def latent_mask(source: MaskSource | None, upright: Image.Image, bucket: tuple[int, int],
                flip: bool, grid: tuple[int, int]):
    """The (1, h, w) float32 tensor of an image's mask on its latent grid, or None when it has
    no mask or the mask keeps every cell whole (then the loss is the plain mean, bit for bit)."""
    if source is None:
        return None
    mask = mask_at_image_size(source, upright)
    if mask.getextrema()[0] == 255:
        return None
    cells = mask_to_grid(mask, bucket, flip, grid)
    if cells.min() >= 1.0:  # the black part lies outside the bucket's crop
        return None
    import torch  # the one place this module touches torch

    return torch.from_numpy(np.ascontiguousarray(cells[None]))


def check_mask(path: Path, image: Probe, mask_file: Path | None,
               mask_folder: Path | None) -> MaskCheck:
    """What the scan says about the mask of the image at `path`. `image` is its probe with
    `alpha_range`; `mask_file` its file in `mask_folder` (None: none there, or no folder)."""
    if mask_file is not None:
        return _check_file(mask_file, image)
    notes: tuple[str, ...] = ()
    alpha = image.alpha_range is not None and image.alpha_range[0] < 255
    if mask_folder is not None:
        notes = (f"no mask for it in {mask_folder} (no {path.stem}.png, .jpg, .jpeg, .webp or "
                 f".bmp there), so it trains on "
                 f"{'its alpha channel' if alpha else 'the whole image'}; add one to mask it",)
    if not alpha:
        return MaskCheck(notes=notes)
    if image.alpha_range[1] == 0:
        return MaskCheck(problem="fully transparent: with masked loss its alpha channel is its "
                                 "mask, and that keeps nothing to train; make the subject "
                                 "opaque, or remove the image", notes=notes)
    return MaskCheck(MaskSource(None), notes=notes)


def _check_file(mask_file: Path, image: Probe) -> MaskCheck:
    probe = probe_image(mask_file)
    reason = probe.reason
    if not reason:
        try:
            low_high = read_mask_file(mask_file).getextrema()
        except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three
            reason = f"corrupt image data ({error})"
    if reason:
        return MaskCheck(problem=f"its mask {mask_file} cannot be used: {reason}; fix or "
                                 "replace the mask (or delete it to train the whole image)")
    if low_high[1] == 0:
        return MaskCheck(problem=f"its mask {mask_file} is all black, so nothing of this image "
                                 "would be trained; paint the part to train white (or delete "
                                 "the mask to train the whole image)")
    notes: tuple[str, ...] = ()
    mask_ratio, image_ratio = probe.width / probe.height, image.width / image.height
    if abs(mask_ratio / image_ratio - 1) > ASPECT_TOLERANCE:
        notes = (f"its mask {mask_file} is {probe.width}x{probe.height} px and the image "
                 f"{image.width}x{image.height}: the mask is stretched to the image; is it "
                 "this image's mask?",)
    return MaskCheck(MaskSource(mask_file), notes=notes)
