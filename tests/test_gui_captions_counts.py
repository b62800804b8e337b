"""Issue 14 items 5 and 9: caption edits are never lost, and every count is the trainer's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QFocusEvent

from app.main import MainWindow
from synthetic import make_shapes_dataset


@pytest.fixture
def grid_window(qtbot, tmp_path: Path):
    images = tmp_path / "images"
    make_shapes_dataset(images, 4)
    window = MainWindow()
    qtbot.addWidget(window)
    grid = window.dataset.thumbnails
    with qtbot.waitSignal(grid.loaded_all, timeout=10_000):
        window.dataset.table.add_row(images)
    return window, grid, images


def test_an_edited_caption_is_saved_when_another_thumbnail_is_clicked(qtbot, grid_window) -> None:
    window, grid, images = grid_window
    os.chmod(images / "img01.txt", 0o644)
    grid.select("img01.png")
    grid.caption.setPlainText("a green circle, zzshapes")
    grid.select("img02.png")  # clicking away used to drop the edit
    assert (images / "img01.txt").read_text() == "a green circle, zzshapes\n"
    assert stat.S_IMODE((images / "img01.txt").stat().st_mode) == 0o644  # was 0600 after saving
    assert grid.caption.toPlainText() == (images / "img02.txt").read_text().strip()
    before = (images / "img02.txt").stat().st_mtime_ns
    grid.select("img03.png")  # not edited: not rewritten
    assert (images / "img02.txt").stat().st_mtime_ns == before


def test_ctrl_s_and_leaving_the_box_save_the_caption(qtbot, grid_window) -> None:
    window, grid, images = grid_window
    grid.select("img01.png")
    grid.caption.setPlainText("typed, then ctrl s")
    # The offscreen platform has no active window to dispatch key presses to shortcuts, so
    # the test checks the shortcut's keys and context, then fires it as Qt would.
    shortcut = grid.save_shortcut
    assert shortcut.key().toString() == "Ctrl+S" and shortcut.context() == Qt.WidgetWithChildrenShortcut
    shortcut.activated.emit()
    assert (images / "img01.txt").read_text() == "typed, then ctrl s\n"
    assert grid.caption_file.text() == "img01.txt saved"
    grid.caption.setPlainText("typed, then clicked elsewhere")
    grid.eventFilter(grid.caption, QFocusEvent(QEvent.FocusOut))  # the box loses focus
    assert (images / "img01.txt").read_text() == "typed, then clicked elsewhere\n"
    grid.caption.setPlainText("typed, then the window closed")
    window.close()
    assert (images / "img01.txt").read_text() == "typed, then the window closed\n"


def test_a_caption_that_cannot_be_saved_says_so_and_keeps_the_text(qtbot, grid_window,
                                                                    monkeypatch) -> None:
    window, grid, images = grid_window
    grid.select("img01.png")
    grid.caption.setPlainText("my careful caption")

    def refuse(path, text):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("app.thumbnails.atomic_write_text", refuse)
    assert grid.save_caption() is None
    assert grid.caption_file.text() == "img01.txt can't be saved: Permission denied"
    assert grid.caption.toPlainText() == "my careful caption" and grid.caption_edited


def test_counts_are_the_trainers_everywhere(qtbot, tmp_path: Path) -> None:
    """41 images per epoch in the calculator where the health report said 40: unusable files
    were counted. The Repeats column said 'auto' for `10_mychar` instead of 10."""
    folder = tmp_path / "10_mychar"
    make_shapes_dataset(folder, 4)
    (folder / "broken.png").write_text("not an image")
    window = MainWindow()
    qtbot.addWidget(window)
    health, table = window.dataset.health, window.dataset.table
    with qtbot.waitSignal(health.done, timeout=30_000):
        table.add_row(folder)
    assert health.summary.text().startswith("Images used: 4 for training, 40 per epoch")
    assert table.item(0, 1).text() == "4"
    assert table.cellWidget(0, 2).text() == "auto (10)"
    assert window.dataset.calculator.text().startswith(
        "40 images seen per epoch, batch 1: 40 steps per epoch")
    # the grid lists what is on disk, and says which of it training leaves out, and why
    grid = window.dataset.thumbnails
    qtbot.waitUntil(lambda: grid.count.text().startswith("5 images, 1 not trained on"),
                    timeout=10_000)
    broken = grid.model.index(grid.model.row_of("broken.png"))
    assert "Not trained on:" in broken.data(Qt.ToolTipRole)
    grid.select("broken.png")  # no caption file is offered for it
    assert grid.caption.isReadOnly() and not grid.save_button.isEnabled()
    assert grid.caption_file.text().startswith("broken.png is not trained on:")
    # a caption saved in the grid makes the report check again (it went stale)
    qtbot.waitUntil(lambda: len(grid.paths) == 5, timeout=10_000)
    (folder / "img00.txt").unlink()
    window.binder.set_value("dataset", "trigger_word", "")
    grid.select("img00.png")
    grid.caption.setPlainText("")
    with qtbot.waitSignal(health.done, timeout=30_000):
        grid.save_caption()  # an empty caption: the report notes it again
    assert "img00.txt" in "\n".join(health.lines.item(i).text() for i in range(health.lines.count()))
