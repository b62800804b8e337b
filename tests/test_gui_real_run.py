"""A real short training run on the tiny model, started from the Run section, reaches Finished
and leaves the exported LoRA file. The model is built in a subprocess, so this test process
stays torch-free (the trainer child pays for torch). How long the event loop stalls during
such a run is measured in bench/gui_responsiveness.py, which sets the run up with the helpers
here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.main import MainWindow
from trainer.events import Finished, Sample
from synthetic import make_shapes_dataset


def make_tiny_model_folder(folder: Path) -> Path:
    """The tiny model, built by the trainer's CLI in a child process (this one stays torch-free)."""
    subprocess.run([sys.executable, "-m", "trainer.cli", "make-tiny-model", str(folder)],
                   check=True, capture_output=True, timeout=300)
    return folder


def set_up_tiny_run(window: MainWindow, root: Path, model: Path, **settings) -> None:
    """Point the window at a 4-image dataset and the tiny model for a short run into
    root/runs; `settings` ("section.name": value) change the run's config."""
    images = root / "images"
    make_shapes_dataset(images, 4)
    window.load_preset("tiny-cpu")
    window.dataset.table.add_row(images)
    window.model.set_path(str(model))
    assert "1.x" in window.model.detected.text()
    settings = {"schedule.max_train_steps": 3, "output.verify": False,
                "sampling.prompts": ["a red circle"], "sampling.steps": 2,
                "output.name": "gui_tiny", **settings}
    for key, value in settings.items():
        section, name = key.split(".")
        assert window.binder.set_value(section, name, value), window.binder.errors
    window.binder.load(window.config)
    window.run.runs_folder.setText(str(root / "runs"))
    assert window.run.start_button.isEnabled(), window.run.reason.text()


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_folder(tmp_path_factory.mktemp("gui-tiny") / "tiny")


@pytest.mark.slow
def test_a_real_run_from_the_run_section_finishes_and_exports(qtbot, tmp_path: Path,
                                                            tiny_model_folder: Path) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    set_up_tiny_run(window, tmp_path, tiny_model_folder)
    window.show()
    qtbot.mouseClick(window.run.start_button, Qt.LeftButton)
    job = window.run.job
    try:
        qtbot.waitUntil(lambda: job.done, timeout=240_000)
    finally:
        if not job.done:  # a hung run: end it, so closing the window does not ask
            job.kill()
            job.state = "failed"
    monitor = window.run.monitor
    assert isinstance(monitor.outcome, Finished), monitor.log.toPlainText()
    exported = Path(monitor.outcome.path)
    assert exported.exists() and exported.name == "gui_tiny.safetensors"
    assert monitor.progress.value() == 3
    assert len(monitor.plot.steps) == 3
    assert monitor.gallery.cells  # the end-of-run previews arrived as PNG bytes
    assert all(isinstance(c.sample, Sample) for c in monitor.gallery.cells.values())

    # Export an earlier-or-latest checkpoint from the Export section (a child process).
    exporter = window.show_section("Export").exporter
    assert exporter.checkpoint.count() >= 1, monitor.log.toPlainText()
    window.binder.set_value("metadata", "title", "GUI tiny")
    asked = []
    exporter.ask_replace = lambda path: asked.append(path) or True  # the run's own file
    assert exporter.export()
    assert asked == [exported]
    qtbot.waitUntil(lambda: exporter.process is None, timeout=120_000)
    assert "LoRA written to" in exporter.report.toPlainText(), exporter.report.toPlainText()
    assert exporter.out.exists()
