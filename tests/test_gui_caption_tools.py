"""The Dataset section's Caption tools tab (app/caption_tools.py, app/caption_model.py): a
recorded `caption --json` stream replayed into it, then the real children - a bulk edit
previewed, applied, counted and undone; the tiny tagger asking before it replaces captions;
Cancel halfway; a model that can't be used."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from app.binding import Binder
from app.caption_model import ASK
from app.caption_tools import CaptionTools
from app.colours import ERROR
from app.session import CONFIG_DIR_ENV
from app.thumbnails import ThumbnailGrid
from tiny_captioners import make_tagger
from trainer.config import DatasetConfig, DatasetFolder, TrainConfig

RED_TAGS, GREEN_TAGS = "red hair, ^_^, 1girl", "hatsune miku, ^_^, 1girl, blue sky"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "settings"))
    data = tmp_path / "chars"
    data.mkdir()
    for index in range(4):
        Image.new("RGB", (64, 64), (255, 0, 0) if index % 2 else (0, 255, 0)).save(
            data / f"img{index}.png")
    (data / "img0.txt").write_text("old, tree")
    (data / "img1.txt").write_text("old, sky")
    return data


@pytest.fixture
def tools(qtbot, folder: Path) -> CaptionTools:
    binder = Binder(TrainConfig(dataset=DatasetConfig(folders=[DatasetFolder(path=folder)])))
    grid = ThumbnailGrid(binder)
    panel = CaptionTools(binder, grid)
    qtbot.addWidget(grid)
    qtbot.addWidget(panel)
    assert not panel.counter.running  # nothing counted while the tab is not on screen
    panel.show()
    qtbot.waitUntil(lambda: panel.frequency.rowCount() > 0, timeout=30_000)
    return panel


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".txt"}


def wait(qtbot, tools: CaptionTools) -> None:
    qtbot.waitUntil(lambda: not tools.child.running and not tools.counter.running,
                    timeout=60_000)


def frequency(tools: CaptionTools) -> dict[str, int]:
    return {tools.frequency.item(r, 1).text(): int(tools.frequency.item(r, 2).text())
            for r in range(tools.frequency.rowCount())}


def test_a_recorded_caption_stream_fills_the_table_and_progress(tools: CaptionTools) -> None:
    stream = [{"event": "loading", "model": "m.onnx"},
              {"event": "caption", "done": 1, "total": 3, "image": "/d/a.png",
               "caption_file": "/d/a.txt", "before": None, "after": "cat", "changed": True,
               "error": ""},
              {"event": "caption", "done": 2, "total": 3, "image": "/d/b.png",
               "caption_file": "/d/b.txt", "before": "cat", "after": "cat", "changed": False,
               "error": ""}]
    for message in stream:
        tools._line(message)
    panel = tools.model_panel
    assert (panel.progress.value(), panel.progress.maximum()) == (2, 3)
    assert [tools.changes.item(1, c).text() for c in range(3)] == ["b.png", "cat", "(unchanged)"]
    assert tools.changes.item(0, 1).text() == "(no caption)"
    tools._line({"event": "finished", "done": 2, "total": 3, "changed": 1, "stopped": True,
                 "dry_run": False, "skipped": {}, "journal": "/d/j"})
    assert tools.status.text() == "Stopped after 2 of 3 images; 1 caption(s) written."


def test_a_bulk_edit_is_previewed_applied_counted_and_undone(tools: CaptionTools, qtbot,
                                                             folder: Path) -> None:
    before = snapshot(folder)
    assert frequency(tools) == {"old": 2, "tree": 1, "sky": 1}  # ss_tag_frequency's numbers
    tools.add_tags.setText("flat")
    tools.remove_tags.setText("old")
    assert tools.run_edit(dry_run=True)
    wait(qtbot, tools)
    assert snapshot(folder) == before  # a preview
    assert tools.changes.rowCount() == 4 and "would change" in tools.status.text()
    assert tools.run_edit(dry_run=False)
    wait(qtbot, tools)
    assert (folder / "img0.txt").read_text() == "tree, flat"
    assert (folder / "img3.txt").read_text() == "flat"  # a tag edit makes a missing caption
    assert frequency(tools) == {"flat": 4, "tree": 1, "sky": 1}
    assert tools.undo()
    wait(qtbot, tools)
    assert snapshot(folder) == before
    assert "Restored 4 caption file(s)" in tools.status.text()


def test_tags_that_start_with_a_dash_reach_the_child_as_values(tools: CaptionTools, qtbot,
                                                               folder: Path) -> None:
    (folder / "img0.txt").write_text("-_-, tree")
    tools.remove_tags.setText("-_-")
    tools.add_tags.setText("-chan")
    assert tools.run_edit(dry_run=False)
    wait(qtbot, tools)
    assert (folder / "img0.txt").read_text() == "tree, -chan", tools.status.text()
    panel = tools.model_panel
    panel.exclude.setText("-_-, 1girl")
    args = panel.arguments(preview=True)
    assert "--exclude=-_-" in args and "--exclude=1girl" in args


def test_the_caption_box_is_read_only_while_a_tool_writes(tools: CaptionTools, qtbot,
                                                          folder: Path, tmp_path: Path) -> None:
    grid = tools.thumbnails
    qtbot.waitUntil(lambda: len(grid.paths) == 4, timeout=10_000)
    grid.select("img0.png")
    grid.caption.setPlainText("typed before the run")  # saved when the tool starts
    tools.model_panel.model.setText(str(make_tagger(tmp_path / "wd14")))
    assert tools.model_panel.run(preview=False)
    assert grid.caption.isReadOnly() and not grid.save_button.isEnabled()
    assert (folder / "img0.txt").read_text().strip() == "typed before the run"
    wait(qtbot, tools)
    assert not grid.caption.isReadOnly()
    assert (folder / "img0.txt").read_text().strip() == "typed before the run"  # missing mode


def test_nothing_to_change_is_said_and_nothing_runs(tools: CaptionTools) -> None:
    assert not tools.run_edit(dry_run=False)
    assert "Say what to change" in tools.status.text() and not tools.child.running


def test_the_tagger_asks_before_replacing_and_the_grid_shows_the_new_caption(
        tools: CaptionTools, qtbot, folder: Path, tmp_path: Path) -> None:
    panel = tools.model_panel
    panel.model.setText(str(make_tagger(tmp_path / "wd14")))
    panel.mode.setCurrentIndex(panel.mode.findData("replace"))
    grid = tools.thumbnails
    qtbot.waitUntil(lambda: len(grid.paths) == 4, timeout=10_000)
    grid.select("img1.png")
    assert grid.caption.toPlainText() == "old, sky"
    before = snapshot(folder)
    assert not panel.run(preview=False)  # asked first, in place
    assert panel.caption_button.text() == ASK and snapshot(folder) == before
    assert panel.run(preview=False)
    wait(qtbot, tools)
    assert (folder / "img1.txt").read_text() == RED_TAGS
    assert (folder / "img2.txt").read_text() == GREEN_TAGS
    assert grid.caption.toPlainText() == RED_TAGS  # re-read, not the old text saved over it
    assert tools.status.text() == "4 caption(s) written."
    assert panel.caption_button.text() == "Caption"


def test_cancel_stops_between_two_images(tools: CaptionTools, qtbot, folder: Path,
                                         tmp_path: Path) -> None:
    for index in range(4, 12):
        Image.new("RGB", (64, 64), (255, 0, 0)).save(folder / f"img{index}.png")
    panel = tools.model_panel
    panel.model.setText(str(make_tagger(tmp_path / "slow", side=256, slow_convs=64)))
    assert panel.run(preview=False)  # "missing": never asks, changes no existing caption
    qtbot.waitUntil(lambda: tools.changes.rowCount() >= 1, timeout=60_000)
    panel.cancel.click()
    wait(qtbot, tools)
    assert tools.status.text().startswith("Stopped after ")
    written = [p for p in folder.glob("img*.txt") if p.read_text() == RED_TAGS]
    assert 1 <= len(written) < 9  # nine red images have no caption: not all were captioned
    assert "of 10 images" in tools.status.text()  # and one green
    assert (folder / "img0.txt").read_text() == "old, tree"


def test_a_model_that_cant_be_used_is_named(tools: CaptionTools, qtbot, tmp_path: Path,
                                            folder: Path) -> None:
    bad = tmp_path / "bad"
    make_tagger(bad)
    (bad / "selected_tags.csv").unlink()
    panel = tools.model_panel
    panel.model.setText(str(bad / "model.onnx"))
    assert panel.run(preview=True)
    wait(qtbot, tools)
    assert "selected_tags.csv is missing" in tools.status.text()
    assert tools.status.property("tone") == ERROR
    assert panel.progress.maximum() == 1  # not left spinning


def test_the_model_and_its_settings_are_remembered(tools: CaptionTools, qtbot,
                                                   folder: Path) -> None:
    panel = tools.model_panel
    panel.model.setText("/models/wd.onnx")
    panel.general.setValue(0.5)
    panel.remember()
    again = CaptionTools(tools.binder, tools.thumbnails)
    qtbot.addWidget(again)
    assert again.model_panel.model.text() == "/models/wd.onnx"
    assert again.model_panel.general.value() == 0.5
    wait(qtbot, again)
