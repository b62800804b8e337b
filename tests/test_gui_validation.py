"""The validation loss in the window: its own series on the loss plot (a recorded event
stream replayed, as on File > Open run), and the Export section picking the checkpoint with the
lowest validation loss and saying why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.binding import Binder
from app.exporter import Exporter
from app.run_monitor import RunMonitor
from trainer.events import EventLog, Finished, Loss, Started, Validation, read_events


@pytest.fixture
def monitor(qtbot) -> RunMonitor:
    widget = RunMonitor()
    qtbot.addWidget(widget)
    return widget


def test_validation_points_are_a_series_of_their_own_and_a_resume_redraws_them(
        monitor, tmp_path: Path) -> None:
    run = tmp_path / "run"
    log = EventLog(run)
    log.write(Started(str(run), 30))
    log.write(Validation(0, 0.30, images=2))
    for step in range(1, 21):
        log.write(Loss(step, 0.5 - step / 100, 1e-4))
        if step % 10 == 0:
            log.write(Validation(step, 0.30 - step / 1000, images=2))
    # stopped after 20 and resumed from the checkpoint at 10: 11-20 are trained again
    log.write(Started(str(run), 30, resumed_from_step=10))
    log.write(Validation(10, 0.29, images=2))
    log.write(Loss(11, 0.2, 1e-4))
    log.write(Finished(str(run / "x.safetensors"), 11))
    log.close()
    monitor.feed(read_events(run))
    plot = monitor.plot
    assert plot.validation == {0: 0.30, 10: 0.29}  # 20 belonged to the steps trained again
    plot._draw()
    steps, losses = plot.validation_curve.getData()
    assert steps.tolist() == [0, 10] and losses.tolist() == pytest.approx([0.30, 0.29])
    assert plot.steps == list(range(1, 12))  # the training loss is its own curve


def _checkpoint(run: Path, step: int, validation: float | None) -> None:
    folder = run / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True)
    meta = {"ss_steps": str(step)}
    if validation is not None:
        meta["lora_studio_validation_loss"] = f"{validation:.6g}"
    (folder / "metadata.json").write_text(json.dumps(meta))


def test_export_picks_the_lowest_validation_loss_and_says_why(qtbot, tmp_path: Path) -> None:
    exporter = Exporter(Binder())
    qtbot.addWidget(exporter)
    run = tmp_path / "run"
    for step, loss in ((100, 0.1912), (200, 0.1878), (300, 0.1995)):
        _checkpoint(run, step, loss)
    exporter.set_run_dir(run)
    items = [exporter.checkpoint.itemText(i) for i in range(exporter.checkpoint.count())]
    assert items == ["step 300 · validation 0.1995", "step 200 · validation 0.1878",
                     "step 100 · validation 0.1912"]
    assert exporter.checkpoint.currentText().startswith("step 200")
    assert "step 200 is picked: its validation loss (0.1878) is the lowest of 3" in \
        exporter.where.text()
    assert exporter.target().name == "my_lora-step200.safetensors"  # not the run's own file

    plain = tmp_path / "plain"  # a run without validation: the newest, as before
    for step in (100, 200):
        _checkpoint(plain, step, None)
    exporter.set_run_dir(plain)
    assert exporter.checkpoint.currentText() == "step 200"
    assert exporter.where.text() == f"Run: {plain}"
