"""The Run section without torch: a recorded event stream replayed through a fake job fills the
progress bar, plot and gallery; the buttons send the right commands; a past run reopens."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from app.main import MainWindow
from trainer.events import (EventLog, Failed, Finished, Log, Loss, Progress, Sample, Saved, Started,
                            read_events)
from synthetic import make_shapes_dataset

PROMPTS = ["a red circle", "a blue square"]


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def recorded_run(run_dir: Path, total: int = 20) -> Path:
    """Write an events.jsonl as a real run would (samples as PNG files beside it)."""
    log = EventLog(run_dir)
    log.write(Started(str(run_dir), total))
    for step in range(1, total + 1):
        log.write(Loss(step, 0.5 / step ** 0.5, 1e-4))
        log.write(Progress(step, total, epoch=1 + step // 8, it_per_s=4.0, eta_s=(total - step) / 4))
        if step % 10 == 0:
            for index, prompt in enumerate(PROMPTS):
                for scale in (0.0, 1.0):
                    log.write(Sample(step, prompt, 1234 + index, scale,
                                     png_bytes=png((int(200 * scale), 40, 40 * step % 255))))
    log.write(Log("info", "saving"))
    log.write(Saved(str(run_dir / "checkpoints" / f"step-{total:06d}"), "checkpoint", total))
    log.write(Saved(str(run_dir / "my_lora.safetensors"), "lora", total))
    log.write(Finished(str(run_dir / "my_lora.safetensors"), total))
    log.close()
    return run_dir


class FakeJob:
    """Stands in for trainer.jobs.Job: hands out recorded events a few at a time."""

    instances: list[FakeJob] = []

    def __init__(self, spec, events=None) -> None:
        self.spec = spec
        self.sent: list[str] = []
        self.state = "pending"
        self.pending = list(events or [])
        FakeJob.instances.append(self)

    def start(self) -> None:
        self.state = "running"

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed")

    def send(self, command: str) -> None:
        self.sent.append(command)

    def poll(self, timeout: float = 0.0):
        batch, self.pending = self.pending[:7], self.pending[7:]
        if any(isinstance(e, Finished) for e in batch):
            self.state = "finished"
        elif any(isinstance(e, Failed) for e in batch):
            self.state = "failed"
        return batch

    def kill(self) -> None:
        self.state = "failed"


@pytest.fixture
def ready_window(qtbot, tmp_path: Path):
    """A window whose config can start (a model folder with an SD 1.x U-Net config, images)."""
    images = tmp_path / "images"
    make_shapes_dataset(images, 4)
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    (model / "unet" / "config.json").write_text('{"cross_attention_dim": 768}')
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    window = MainWindow()
    qtbot.addWidget(window)
    window.dataset.table.add_row(images)
    window.model.set_path(str(model))
    window.run.runs_folder.setText(str(tmp_path / "runs"))
    FakeJob.instances.clear()
    window.ask_close = lambda: "wait"  # a test ending mid-run must not open a modal question
    return window


def test_a_recorded_stream_fills_progress_plot_and_gallery(qtbot, ready_window, tmp_path) -> None:
    events = read_events(recorded_run(tmp_path / "recorded"), load_images=True)
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, events)
    assert window.run.start_button.isEnabled(), window.run.reason.text()
    job = window.run.start()
    assert isinstance(job, FakeJob) and job.spec.config["network"]["rank"] == 16
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    monitor = window.run.monitor
    assert monitor.progress.value() == monitor.progress.maximum() == 20
    assert len(monitor.plot.steps) == 20 and len(monitor.plot.smoothed) == 20
    assert monitor.plot.raw_curve.getData()[0] is not None
    assert len(monitor.gallery.cells) == 8  # 2 steps × 2 prompts × (baseline + LoRA)
    assert monitor.gallery.steps == [10, 20] and monitor.gallery.prompts == PROMPTS
    baseline = monitor.gallery.cells[(10, "a red circle", 0.0)]
    lora = monitor.gallery.cells[(10, "a red circle", 1.0)]
    assert monitor.gallery.grid.indexOf(lora) == monitor.gallery.grid.indexOf(baseline) + 1
    assert "Finished" in monitor.status.text()
    assert "saving" in monitor.log.toPlainText()
    assert window.run.start_button.isEnabled() and not window.run.stop_button.isEnabled()
    qtbot.mouseClick(lora, Qt.LeftButton)
    assert monitor.gallery.last_dialog.isVisible()
    monitor.gallery.last_dialog.close()


def test_pause_stop_sample_and_save_send_commands(qtbot, ready_window) -> None:
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("x", 100)])
    qtbot.mouseClick(window.run.start_button, Qt.LeftButton)
    job = FakeJob.instances[-1]
    qtbot.waitUntil(lambda: window.run.monitor.total == 100, timeout=3000)
    assert window.run.running and not window.run.start_button.isEnabled()
    qtbot.mouseClick(window.run.pause_button, Qt.LeftButton)
    assert job.sent == ["pause"] and window.run.pause_button.text() == "Continue"
    qtbot.mouseClick(window.run.pause_button, Qt.LeftButton)
    assert job.sent == ["pause", "resume"]
    qtbot.mouseClick(window.run.sample_button, Qt.LeftButton)
    qtbot.mouseClick(window.run.save_button, Qt.LeftButton)
    qtbot.mouseClick(window.run.pause_button, Qt.LeftButton)
    qtbot.mouseClick(window.run.stop_button, Qt.LeftButton)  # stopping a paused run resumes it
    assert job.sent == ["pause", "resume", "sample_now", "save_now", "pause", "resume", "stop"]
    job.pending = [Finished("x.safetensors", 3)]
    qtbot.waitUntil(lambda: not window.run.running, timeout=3000)
    assert "stopped early" in window.run.monitor.status.text()


def test_start_is_disabled_with_the_reason(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    assert not window.run.start_button.isEnabled()
    assert "base model" in window.run.reason.text()
    assert window.run.start() is None


def test_open_run_shows_a_past_runs_curve_and_gallery(qtbot, tmp_path: Path) -> None:
    run_dir = recorded_run(tmp_path / "past")
    window = MainWindow()
    qtbot.addWidget(window)
    window.open_run(run_dir)
    assert window.stack.currentWidget() is window.run
    assert len(window.run.monitor.plot.steps) == 20
    assert len(window.run.monitor.gallery.cells) == 8
    assert window.run.monitor.progress.value() == 20


def test_the_gui_modules_load_without_torch() -> None:
    code = ("import sys, app.main, app.run_monitor, app.section_run, app.model_info; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"QT_QPA_PLATFORM": "offscreen", "PATH": ""},
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_failed_run_says_why_and_start_comes_back(qtbot, ready_window) -> None:
    window = ready_window
    failure = Failed("out_of_memory", "the GPU ran out of memory at step 2",
                     "lower the batch size or resolution")

    class FailingJob(FakeJob):
        def poll(self, timeout: float = 0.0):
            batch, self.pending = self.pending, []
            if any(isinstance(e, Failed) for e in batch):
                self.state = "failed"
            return batch

    window.run.job_factory = lambda spec: FailingJob(spec, [Started("x", 10), failure])
    window.run.start()
    qtbot.waitUntil(lambda: not window.run.running, timeout=3000)
    status = window.run.monitor.status
    assert "ran out of memory" in status.text() and "batch size" in status.text()
    assert "out_of_memory" in window.run.monitor.log.toPlainText()
    assert window.run.start_button.isEnabled()


def test_a_sample_becomes_the_cover_image(qtbot, tmp_path: Path) -> None:
    run_dir = recorded_run(tmp_path / "past")
    window = MainWindow()
    qtbot.addWidget(window)
    window.open_run(run_dir)
    thumb = window.run.monitor.gallery.cells[(20, "a blue square", 1.0)]
    thumb.cover_requested.emit(thumb.sample)
    cover = window.config.metadata.cover_image
    assert cover is not None and cover.exists() and cover.parent.name == "samples"
    assert window.export.cover.text() == str(cover)
    assert window.export.exporter.checkpoint.count() == 0  # the recorded run saved none on disk


def test_resume_continues_in_the_same_folder(qtbot, ready_window, tmp_path: Path) -> None:
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("x", 10)])
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    window.binder.set_value("output", "dir", str(tmp_path / "where-it-once-was"))
    window.save_config_file(run_dir / "config.toml")  # a run folder that was moved since
    assert window.resume_run(run_dir)
    job = FakeJob.instances[-1]
    assert job.spec.resume == str(run_dir) and job.spec.run_dir == str(run_dir)
    assert job.spec.config["output"]["dir"] == str(run_dir)  # the LoRA lands in it, too


def test_text_from_files_is_shown_as_plain_text(qtbot, tmp_path: Path) -> None:
    """A prompt or log line with markup (from a run folder someone sent) is never rendered as
    rich text: every label showing it is PlainText."""
    from PySide6.QtWidgets import QLabel

    run_dir = tmp_path / "hostile"
    log = EventLog(run_dir)
    log.write(Started(str(run_dir), 1))
    log.write(Loss(1, 0.5, 1e-4))
    markup = '<b>bold</b><img src="file:///etc/passwd"><a href="http://x">link</a>'
    log.write(Sample(1, markup, 1, 1.0, png_bytes=png((10, 20, 30))))
    log.write(Failed("internal", markup, markup))
    log.close()
    window = MainWindow()
    qtbot.addWidget(window)
    window.open_run(run_dir)
    showing = [label for label in window.findChildren(QLabel) if "<b>" in label.text()]
    assert showing, "the prompt is shown somewhere"
    assert all(label.textFormat() == Qt.PlainText for label in showing)
