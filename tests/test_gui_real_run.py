"""A real short training run on the tiny model, started from the Run section, reaches Finished
and leaves the exported LoRA file. The model is built in a subprocess, so this test process
stays torch-free (the trainer child pays for torch)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer

from app.main import MainWindow
from trainer.events import Finished, Sample
from synthetic import make_shapes_dataset


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gui-tiny") / "tiny"
    subprocess.run([sys.executable, "-m", "trainer.cli", "make-tiny-model", str(folder)],
                   check=True, capture_output=True, timeout=300)
    return folder


@pytest.mark.slow
def test_a_real_run_from_the_run_section_finishes_and_exports(qtbot, tmp_path: Path,
                                                            tiny_model_folder: Path) -> None:
    images = tmp_path / "images"
    make_shapes_dataset(images, 4)
    window = MainWindow()
    qtbot.addWidget(window)
    window.load_preset("tiny-cpu")
    window.dataset.table.add_row(images)
    window.model.set_path(str(tiny_model_folder))
    assert "1.x" in window.model.detected.text()
    for key, value in (("schedule.max_train_steps", 3), ("output.verify", False),
                       ("sampling.prompts", ["a red circle"]), ("sampling.steps", 2),
                       ("output.name", "gui_tiny")):
        section, name = key.split(".")
        assert window.binder.set_value(section, name, value), window.binder.errors
    window.binder.load(window.config)
    window.run.runs_folder.setText(str(tmp_path / "runs"))
    assert window.run.start_button.isEnabled(), window.run.reason.text()
    window.show()
    window._preloading.join(10)  # as in real use: pyqtgraph is loaded while the user sets up
    ticks: list[float] = []
    clock = QTimer()
    clock.setInterval(10)
    clock.timeout.connect(lambda: ticks.append(time.perf_counter()))
    clock.start()
    qtbot.mouseClick(window.run.start_button, Qt.LeftButton)
    job = window.run.job
    try:
        qtbot.waitUntil(lambda: job.done, timeout=240_000)
    finally:
        if not job.done:  # a hung run: end it, so closing the window does not ask
            job.kill()
            job.state = "failed"
    clock.stop()
    stall = max(b - a for a, b in zip(ticks, ticks[1:]))
    print(f"largest event-loop gap during the run: {stall * 1000:.0f} ms over {len(ticks)} ticks")
    assert stall < 0.5  # target 0.1 s (bench/); loose here so a busy CI machine passes
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
    assert exporter.export()
    qtbot.waitUntil(lambda: exporter.process is None, timeout=120_000)
    assert "LoRA written to" in exporter.report.toPlainText(), exporter.report.toPlainText()
    assert exporter.out.exists()
