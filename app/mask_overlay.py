"""Masked loss on the thumbnails: the part of each image the loss ignores is shaded.

With `dataset.masked_loss` on, an image's mask is its same-stem file in its folder's
`mask_folder` (the rule is trainer.mask_files', shared with the trainer), else its own alpha
channel; an image with neither trains everywhere and is shown as it is. Where the mask is
black the thumbnail is darkened and tinted; greys shade in proportion (they weight the loss in
proportion). Runs in the thumbnail loader's thread: QImage and QPainter on a QImage are safe
off the GUI thread.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QImage, QImageIOHandler, QImageReader, QPainter

from trainer.config import DatasetFolder
from trainer.mask_files import mask_files_in

SHADE = QColor(40, 0, 60)  # a dark violet: reads as "left out" on light and dark images
SHADE_OPACITY = 0.7


class MaskFinder:
    """Which mask file each listed image has (None: its alpha channel, or none), as the
    trainer finds it: an image of a kohya `N_name` subfolder looks in the mask folder's
    same-named subfolder when there is one, else in the mask folder. Each mask folder is
    listed once per listing, not once per image."""

    def __init__(self, folders: list[DatasetFolder], masked_loss: bool) -> None:
        self.masked_loss = masked_loss
        self._roots = [(Path(f.path), Path(f.mask_folder)) for f in folders
                       if f.mask_folder is not None] if masked_loss else []
        self._listed: dict[Path, dict[str, Path]] = {}

    def _masks_in(self, folder: Path) -> dict[str, Path]:
        if folder not in self._listed:
            self._listed[folder] = mask_files_in(folder)
        return self._listed[folder]

    def mask_of(self, image: Path) -> Path | None:
        for root, mask_folder in self._roots:
            if image.parent == root:
                return self._masks_in(mask_folder).get(image.stem)
            if image.parent.parent == root:  # a repeat subfolder
                own = mask_folder / image.parent.name
                return self._masks_in(own if own.is_dir() else mask_folder).get(image.stem)
        return None


def _upright_at(path: Path, size: QSize) -> QImage:
    """The image file read upright (EXIF orientation, as the trainer reads masks) at `size`."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    if reader.transformation() & QImageIOHandler.TransformationRotate90:
        size = size.transposed()  # the scaled size applies before the rotation
    reader.setScaledSize(size)
    return reader.read()


def alpha_of(image: QImage) -> QImage | None:
    """The image's alpha channel as a grey image (white = opaque), or None when it has none."""
    if not image.hasAlphaChannel():
        return None
    alpha = image.convertToFormat(QImage.Format_Alpha8)
    grey = QImage(alpha.constBits(), alpha.width(), alpha.height(), alpha.bytesPerLine(),
                  QImage.Format_Grayscale8)
    return grey.copy()  # (the view shares `alpha`'s memory)


def flattened(image: QImage, background: str) -> QImage:
    """Transparency painted on the training background colour, as the trainer sees it."""
    out = QImage(image.size(), QImage.Format_RGB32)
    out.fill(QColor(background))
    painter = QPainter(out)
    painter.drawImage(0, 0, image)
    painter.end()
    return out


def shaded(thumbnail: QImage, mask: QImage) -> QImage:
    """`thumbnail` with its ignored part (black in `mask`, any size) shaded."""
    ignored = mask.convertToFormat(QImage.Format_Grayscale8).scaled(
        thumbnail.size(), Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
    ignored.invertPixels()  # white where the loss ignores the image
    shade = QImage(thumbnail.size(), QImage.Format_ARGB32_Premultiplied)
    shade.fill(SHADE)
    shade.setAlphaChannel(ignored)
    out = thumbnail.convertToFormat(QImage.Format_ARGB32_Premultiplied)
    painter = QPainter(out)
    painter.setOpacity(SHADE_OPACITY)
    painter.drawImage(0, 0, shade)
    painter.end()
    return out


def masked_thumbnail(thumbnail: QImage, mask_file: Path | None, background: str) -> QImage:
    """The thumbnail with the loss's mask shown: from `mask_file`, else its alpha channel."""
    if thumbnail.isNull():
        return thumbnail
    if mask_file is not None:
        mask = _upright_at(mask_file, thumbnail.size())
        if mask.hasAlphaChannel():  # a mask file's transparent pixels are black (the trainer's)
            mask = flattened(mask, "#000000")
        flat = flattened(thumbnail, background) if thumbnail.hasAlphaChannel() else thumbnail
        return shaded(flat, mask) if not mask.isNull() else flat
    alpha = alpha_of(thumbnail)
    return shaded(flattened(thumbnail, background), alpha) if alpha is not None else thumbnail
