"""Light and dark palettes: what the window draws itself (the loss plot, skipped files in the
health report, error lines) takes its colours from the palette and stays readable when the
system switches to dark. Contrast is the WCAG ratio; 4.5 is the bar for body text."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from app.colours import contrast, luminance, use_style
from app.main import MainWindow
from dark_palette import dark_palette
from synthetic import add_bad_files, make_shapes_dataset


@pytest.fixture
def palette_restored():
    app = QApplication.instance()
    before = app.palette()
    yield app
    app.setPalette(before)


def colour_of_stylesheet(widget) -> QColor:
    return QColor(widget.styleSheet().removeprefix("color: ").removesuffix(";"))


def readings(window: MainWindow) -> dict[str, float]:
    """Contrast of each thing the window colours itself against what it is drawn on."""
    plot = window.run.monitor.plot
    background = plot.plot.backgroundBrush().color()
    axis_text = plot.plot.getPlotItem().getAxis("left").textPen().color()
    health = window.dataset.health
    bad_row = next(health.lines.item(row) for row in range(health.lines.count())
                   if health.lines.item(row).data(Qt.UserRole) == "error")
    error_label = window.findChild(object, "error:dataset.resolution")
    return {
        "plot background luminance": luminance(background),
        "plot background vs the list's base": contrast(
            background, health.lines.palette().color(QPalette.Base)),
        "axis text": contrast(axis_text, background),
        "smoothed loss curve": contrast(plot.smooth_curve.opts["pen"].color(), background),
        "learning-rate curve": contrast(plot.lr_curve.opts["pen"].color(), background),
        "skipped file row": contrast(bad_row.foreground().color(),
                                     health.lines.palette().color(QPalette.Base)),
        "error line": contrast(colour_of_stylesheet(error_label),
                               window.palette().color(QPalette.Window)),
    }


def test_switching_to_dark_keeps_everything_readable(qtbot, tmp_path: Path,
                                                     palette_restored) -> None:
    images = tmp_path / "images"
    make_shapes_dataset(images, 3)
    add_bad_files(images)
    window = MainWindow()
    qtbot.addWidget(window)
    window.run.monitor.plot._build()
    window.binder.set_value("dataset", "resolution", 100)  # refused: an error line shows
    window.dataset.table.add_row(images)
    with qtbot.waitSignal(window.dataset.health.done, timeout=30_000):
        window.dataset.health.check()

    light = readings(window)
    assert light["plot background luminance"] > 0.8
    palette_restored.setPalette(dark_palette())  # what Qt does when the system goes dark
    palette_restored.processEvents()  # the widgets hear of it through the event loop
    dark = readings(window)

    assert dark["plot background luminance"] < 0.05  # the plot is dark too, not a white box
    for name in ("axis text", "skipped file row", "error line"):
        assert light[name] >= 4.5 and dark[name] >= 4.5, (name, light[name], dark[name])
    for name in ("smoothed loss curve", "learning-rate curve"):  # lines, not text: 3 is enough
        assert light[name] >= 3 and dark[name] >= 3, (name, light[name], dark[name])
    assert dark["plot background vs the list's base"] == pytest.approx(1.0)  # one surface colour


def test_a_window_opened_in_dark_mode_draws_dark(qtbot, palette_restored) -> None:
    palette_restored.setPalette(dark_palette())
    palette_restored.processEvents()
    window = MainWindow()
    qtbot.addWidget(window)
    plot = window.run.monitor.plot
    plot._build()
    background = plot.plot.backgroundBrush().color()
    assert luminance(background) < 0.05
    assert contrast(plot.plot.getPlotItem().getAxis("bottom").textPen().color(), background) > 10
    window.binder.set_value("output", "name", "bad/name")
    label = window.findChild(object, "error:output.name")
    assert contrast(colour_of_stylesheet(label), window.palette().color(QPalette.Window)) >= 4.5


def unticked_box_contrast(window: MainWindow) -> float:
    """The strongest contrast between the pixels where an unticked leaf's box is drawn (the
    first 16 px of its row: no text reaches there) and the tree's background."""
    tree = window.network.tree
    leaf = tree.leaves["down.0.attn1.to_q"]
    leaf.setCheckState(0, Qt.Unchecked)
    leaf.parent().setExpanded(True)
    leaf.parent().parent().setExpanded(True)
    window.show_section("Network")
    QApplication.processEvents()
    image = tree.viewport().grab().toImage()
    row = tree.visualItemRect(leaf)
    background = tree.palette().color(QPalette.Base)
    return max(contrast(QColor(image.pixel(x, y)), background)
               for x in range(row.left(), row.left() + 16) for y in range(row.top(), row.bottom()))


def test_unticked_boxes_in_the_layer_tree_stand_out_in_both_palettes(qtbot, palette_restored):
    """Plain Fusion drew them at 1.03:1 in the dark palette (invisible) and 1.9:1 in the light
    one; the window's style draws their outline at 3:1 or more (WCAG's bar for controls)."""
    before = palette_restored.style().name()
    use_style(palette_restored)
    try:
        readings = []
        for palette in (QPalette(palette_restored.palette()), dark_palette()):
            palette_restored.setPalette(palette)
            window = MainWindow()
            qtbot.addWidget(window)
            window.resize(1000, 700)
            window.show()
            readings.append(unticked_box_contrast(window))
    finally:
        palette_restored.setStyle(before)
    light, dark = readings
    assert light >= 3 and dark >= 3, readings
