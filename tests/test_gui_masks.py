"""Masked loss in the window: the Masked loss switch, each folder's Masks column, and the
thumbnails shading what the loss leaves out - from a mask file (kohya repeat subfolders
too) or from the image's transparency - with the health report counting the masks."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtGui import QColor

import app.sections_setup as sections_setup
from app.binding import Binder
from app.mask_overlay import MaskFinder
from app.sections_setup import DatasetSection
from app.thumbnails import ThumbnailGrid
from trainer.config import DatasetConfig, DatasetFolder, TrainConfig

RED = (255, 0, 0)


def half_mask(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """White (trained) on the left half, black (ignored) on the right."""
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    mask.save(path)
    return path


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.new("RGB", (64, 64), RED).save(images / "red.png")
    half_mask(masks / "red.png")
    transparent = Image.new("RGBA", (64, 64), (*RED, 255))
    transparent.paste((0, 0, 0, 0), (32, 0, 64, 64))  # its right half is see-through
    transparent.save(images / "cutout.png")
    for name in ("red", "cutout"):
        (images / f"{name}.txt").write_text(f"a {name} thing")
    return images, masks


def pixels(grid: ThumbnailGrid, name: str) -> tuple[QColor, QColor]:
    """(a pixel on the left, one on the right) of the image's thumbnail."""
    icon = grid.model.icons[grid.model.row_of(name)]
    image = icon.pixmap(64, 64).toImage()
    return image.pixelColor(8, 32), image.pixelColor(56, 32)


def loaded_grid(qtbot, binder: Binder) -> ThumbnailGrid:
    grid = ThumbnailGrid(binder)
    qtbot.addWidget(grid)
    with qtbot.waitSignal(grid.loaded_all, timeout=10_000):
        pass
    return grid


def test_thumbnails_shade_what_the_loss_leaves_out(qtbot, data) -> None:
    images, masks = data
    binder = Binder(TrainConfig(dataset=DatasetConfig(
        folders=[DatasetFolder(path=images, mask_folder=masks)])))
    grid = loaded_grid(qtbot, binder)
    left, right = pixels(grid, "red.png")
    assert left.getRgb()[:3] == right.getRgb()[:3] == RED  # masked loss off: as it is
    with qtbot.waitSignal(grid.loaded_all, timeout=10_000):
        binder.set_value("dataset", "masked_loss", True)
    left, right = pixels(grid, "red.png")
    assert left.getRgb()[:3] == RED  # the mask file's white half: trained, untouched
    assert right.red() < 120 and right != left  # its black half: shaded
    # no mask file for cutout.png: its transparency is its mask, flattened on the background
    left, right = pixels(grid, "cutout.png")
    assert left.getRgb()[:3] == RED
    assert right.red() < 120 and right.green() < 120  # white background, shaded
    with qtbot.waitSignal(grid.loaded_all, timeout=10_000):
        binder.set_value("dataset", "background_color", "#00ff00")
    assert pixels(grid, "cutout.png")[1].green() > pixels(grid, "cutout.png")[1].red()


def test_a_mask_folder_inside_the_image_folder_is_not_listed_as_images(qtbot, data) -> None:
    images, masks = data
    inside = images / "masks"
    masks.rename(inside)
    binder = Binder(TrainConfig(dataset=DatasetConfig(
        masked_loss=True, folders=[DatasetFolder(path=images, mask_folder=inside)])))
    grid = loaded_grid(qtbot, binder)
    assert sorted(p.name for p in grid.paths) == ["cutout.png", "red.png"]
    assert pixels(grid, "red.png")[1].red() < 120  # and its mask still shades red.png


def test_a_rotated_photo_is_shaded_upright_as_the_trainer_sees_it(qtbot, tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways (64 wide, 32 high): upright it is 32 wide, 64 high
    Image.new("RGB", (64, 32), RED).save(images / "photo.jpg", quality=100, exif=exif)
    (images / "photo.txt").write_text("a photo")
    mask = Image.new("L", (32, 64), 0)
    mask.paste(255, (0, 0, 32, 32))  # upright: the top half is trained
    mask.save(masks / "photo.png")
    binder = Binder(TrainConfig(dataset=DatasetConfig(
        masked_loss=True, folders=[DatasetFolder(path=images, mask_folder=masks)])))
    grid = loaded_grid(qtbot, binder)
    image = grid.model.icons[0].pixmap(64, 64).toImage()
    assert (image.width(), image.height()) == (32, 64)  # upright
    assert image.pixelColor(16, 8).red() > 200 and image.pixelColor(16, 56).red() < 120


def test_a_repeat_subfolder_finds_its_masks_as_the_trainer_does(tmp_path: Path) -> None:
    root, masks = tmp_path / "data", tmp_path / "masks"
    for folder in (root / "5_cat", root / "3_dog", masks / "5_cat"):
        folder.mkdir(parents=True)
    (masks / "5_cat" / "a.png").write_bytes(b"")
    (masks / "b.jpg").write_bytes(b"")
    finder = MaskFinder([DatasetFolder(path=root, mask_folder=masks)], masked_loss=True)
    assert finder.mask_of(root / "5_cat" / "a.png") == masks / "5_cat" / "a.png"
    assert finder.mask_of(root / "3_dog" / "b.png") == masks / "b.jpg"  # no 3_dog: the root
    assert finder.mask_of(root / "5_cat" / "b.png") is None  # only its own subfolder
    assert MaskFinder([DatasetFolder(path=root, mask_folder=masks)], False).mask_of(
        root / "5_cat" / "a.png") is None


def test_the_masks_column_sets_each_folders_mask_folder(qtbot, data, monkeypatch) -> None:
    images, masks = data
    binder = Binder(TrainConfig(dataset=DatasetConfig(folders=[DatasetFolder(path=images)])))
    section = DatasetSection(binder)
    qtbot.addWidget(section)
    table = section.table
    assert table.isColumnHidden(3)  # nothing to set while masked loss is off
    binder.set_value("dataset", "masked_loss", True)
    assert not table.isColumnHidden(3)
    assert table.cellWidget(0, 3).text() == "transparency..."
    choose, clear = table.cellWidget(0, 3).menu().actions()
    monkeypatch.setattr(sections_setup, "pick_folder", lambda *args: str(masks))
    choose.trigger()
    assert binder.config.dataset.folders[0].mask_folder == masks
    assert table.cellWidget(0, 3).text() == "masks"
    table.cellWidget(0, 2).setValue(2)  # another edit of the row keeps it
    assert binder.config.dataset.folders[0].mask_folder == masks
    monkeypatch.setattr(sections_setup, "pick_folder", lambda *args: "")
    choose.trigger()  # the picker cancelled: nothing changes
    assert binder.config.dataset.folders[0].mask_folder == masks
    clear.trigger()  # said in words: back to the transparency
    assert binder.config.dataset.folders[0].mask_folder is None
    assert table.cellWidget(0, 3).text() == "transparency..."


def test_the_health_report_counts_the_masks(qtbot, data) -> None:
    images, masks = data
    binder = Binder(TrainConfig(dataset=DatasetConfig(
        masked_loss=True, folders=[DatasetFolder(path=images, mask_folder=masks)])))
    section = DatasetSection(binder)
    qtbot.addWidget(section)
    assert not section.table.isColumnHidden(3)  # a restored session with masked loss on
    assert section.table.cellWidget(0, 3).text() == "masks"
    with qtbot.waitSignal(section.health.counted, timeout=60_000,
                          check_params_cb=lambda counts: counts is not None):
        pass
    lines = [section.health.lines.item(i).text() for i in range(section.health.lines.count())]
    assert any(line.startswith("Masked loss: 2 of 2 images have a mask (1 from mask files")
               for line in lines), lines
