"""Compare checkpoints in the Export section (app/compare_grid.py): a recorded `grid --json`
stream replayed into the panel, then a real grid rendered by the child on a tiny run and
reopened from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from app.binding import Binder
from app.compare_grid import CompareGrid, parse_strengths
from app.exporter import Exporter
from test_grid import run  # noqa: F401 - the tiny run with 3 checkpoints (a fixture)


def fake_run(root: Path, losses: list[float]) -> Path:
    for index, loss in enumerate(losses, start=1):
        folder = root / "checkpoints" / f"step-{index * 100:06d}"
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text(json.dumps(
            {"lora_studio_validation_loss": str(loss)}))
    return root


@pytest.fixture
def panel(qtbot) -> CompareGrid:
    binder = Binder()
    exporter = Exporter(binder)
    grid = CompareGrid(binder, exporter)
    qtbot.addWidget(exporter)
    qtbot.addWidget(grid)
    return grid


def test_strengths_are_read_and_a_bad_word_is_named() -> None:
    assert parse_strengths("0, 0.5 0.8,1") == [0.0, 0.5, 0.8, 1.0]
    with pytest.raises(ValueError, match="'half' is not a strength"):
        parse_strengths("0, half")


def test_a_recorded_grid_stream_fills_the_panel(panel, tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path / "my_run", [0.30, 0.25, 0.28])
    panel.exporter.set_run_dir(run_dir)  # as when a run finishes or is opened
    assert panel.checkpoints.count() == 3 and panel.render_button.isEnabled()
    assert panel.checkpoints.item(0).text() == "my_run step 300 · validation 0.2800"
    panel.checkpoints.item(1).setCheckState(Qt.Unchecked)  # leave step 200 out
    panel.binder.set_value("sampling", "prompts", ["a cat, my_style"])
    panel.binder.set_value("sampling", "sampler", "euler_a")
    args = panel.arguments(tmp_path / "g.png")
    steps = [Path(a).name for a in args if "step-" in a]
    assert steps == ["step-000100", "step-000300"]  # oldest first: the grid's rows
    assert args[args.index("--prompt") + 1] == "a cat, my_style"  # the Samples section's
    assert args[args.index("--sampler") + 1] == "euler_a"
    assert args[args.index("--strength") + 1:args.index("--sampler")] == ["0.0", "0.5", "0.8",
                                                                         "1.0"]
    panel.strengths.setText("0, lots")
    assert not panel.render() and "'lots' is not a strength" in panel.status.text()

    sheet = tmp_path / "grid.png"
    Image.new("RGB", (300, 200), (250, 250, 250)).save(sheet)
    for message in [{"done": 1, "total": 4, "cached": False},
                    {"done": 4, "total": 4, "cached": True},
                    {"grid": str(sheet), "rendered": 3, "cached": 1, "cells": []}]:
        panel.handle_message(message)
    assert panel.progress.value() == 4 and panel.progress.maximum() == 4
    assert panel.status.text() == f"3 rendered, 1 from the cache: {sheet}"
    panel.zoom.setCurrentIndex(panel.zoom.findText("200%"))
    assert panel.sheet.pixmap().width() == 600
    saved = panel.save_to(tmp_path / "kept.png")
    assert saved.read_bytes() == sheet.read_bytes()
    panel.checkpoints.setCurrentRow(2)  # step 100
    assert panel.use_selected()
    assert panel.exporter.checkpoint.currentData().endswith("step-000100")


def test_another_run_of_the_same_base_joins_the_list_once(panel, tmp_path: Path) -> None:
    first = fake_run(tmp_path / "a_run", [0.3, 0.2])
    second = fake_run(tmp_path / "b_run", [0.25])
    panel.exporter.set_run_dir(first)
    assert panel.add_run(second) == 1 and panel.add_run(second) == 0  # listed once
    assert [panel.checkpoints.item(i).text().split(" · ")[0]
            for i in range(panel.checkpoints.count())] == ["a_run step 200", "a_run step 100",
                                                           "b_run step 100"]
    assert [str(Path(c).relative_to(tmp_path)) for c in panel.chosen()] == [
        "a_run/checkpoints/step-000100", "a_run/checkpoints/step-000200",
        "b_run/checkpoints/step-000100"]  # the grid's rows: run by run, oldest first
    panel.exporter.set_run_dir(second)  # another run shown in Export: its list alone
    assert panel.checkpoints.count() == 1


@pytest.mark.slow
def test_the_child_renders_the_grid_and_reopening_it_renders_nothing(panel, run, qtbot,
                                                                     tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a cold picture cache for the child
    panel.exporter.set_run_dir(run)
    panel.prompts.setPlainText("a red circle")
    panel.strengths.setText("0, 1")
    panel.binder.set_value("sampling", "steps", 3)
    assert panel.render()
    assert panel.child.running and not panel.render_button.isEnabled()  # in the child
    with qtbot.waitSignal(panel.finished, timeout=240_000) as first:
        pass
    assert first.args[0]["rendered"] == 1 + 3 and first.args[0]["cached"] == 2
    assert not panel.sheet.pixmap().isNull()
    with qtbot.waitSignal(panel.finished, timeout=120_000) as again:
        assert panel.render()
    assert (again.args[0]["rendered"], again.args[0]["cached"]) == (0, 6)
