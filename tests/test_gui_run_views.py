"""What the Run and Export views show: a resumed run's curve (replayed and live), the paused
progress text, the learning-rate axis, fresh axes for a new run, the final speed, the export's
path and its replace question, the Network count with the text encoder, the gallery following
its newest row and the zoom view's caption.

The widgets are built on their own (a Binder where they need the config): no MainWindow, no job.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt, QUrl
from PySide6.QtWidgets import QLabel

import app.exporter as exporter_module
from app.binding import Binder
from app.exporter import Exporter
from app.gallery import Gallery
from app.model_info import describe_model
from app.run_monitor import RunMonitor
from app.section_network import NetworkSection
from trainer.events import (
    EventLog,
    Finished,
    Loss,
    Progress,
    Sample,
    Started,
    read_events,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_BASE = ASSETS / "demo" / "base"


def png(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


def first_run_loss(step: int) -> float:
    return 1.0 / step


def resumed_loss(step: int) -> float:
    return 0.5 / step


def write_first_run(log: EventLog, run_dir: Path, until: int) -> None:
    """A run of 80 steps killed at `until`, after its last checkpoint (at step 60)."""
    log.write(Started(str(run_dir), 80))
    for step in range(1, until + 1):
        log.write(Loss(step, first_run_loss(step), 1e-4))
        log.write(Progress(step, 80, 0, 4.0, (80 - step) / 4))
    log.write(Sample(50, "a red circle", 1, 1.0, png_bytes=png()))


def expected_smoothing(losses: list[float]) -> list[float]:
    """The debiased moving average the plot draws, computed from scratch."""
    ema, out = 0.0, []
    for count, loss in enumerate(losses, start=1):
        ema = 0.9 * ema + 0.1 * loss
        out.append(ema / (1 - 0.9 ** count))
    return out


@pytest.fixture
def monitor(qtbot) -> RunMonitor:
    widget = RunMonitor()
    qtbot.addWidget(widget)
    return widget


def test_a_reopened_resumed_run_plots_each_step_once(monitor, tmp_path: Path) -> None:
    run_dir = tmp_path / "resumed"
    log = EventLog(run_dir)
    write_first_run(log, run_dir, until=65)  # 61-65 are trained again after the resume
    log.write(Started(str(run_dir), 80, resumed_from_step=60))
    for step in range(61, 81):
        log.write(Loss(step, resumed_loss(step), 1e-4))
    log.write(Finished(str(run_dir / "my_lora.safetensors"), 80))
    log.close()
    monitor.feed(read_events(run_dir, load_images=True))  # what File > Open run does
    plot = monitor.plot
    assert plot.steps == list(range(1, 81))  # no second 61-80, no line back from 80 to 61
    losses = [first_run_loss(s) for s in range(1, 61)] + [resumed_loss(s) for s in range(61, 81)]
    assert plot.losses == pytest.approx(losses)
    assert plot.smoothed == pytest.approx(expected_smoothing(losses))
    assert plot.raw_curve.getData()[0].tolist() == list(range(1, 81))


def test_a_live_resume_shows_the_steps_before_it(monitor, tmp_path: Path) -> None:
    run_dir = tmp_path / "stopped"
    log = EventLog(run_dir)
    write_first_run(log, run_dir, until=62)
    resumed = Started(str(run_dir), 80, resumed_from_step=60)
    log.write(resumed)  # the trainer logs it before the window polls it
    log.close()
    monitor.reset()  # what Start does before the job's first event
    monitor.feed([resumed])
    monitor.feed([Loss(61, resumed_loss(61), 1e-4), Loss(62, resumed_loss(62), 1e-4)])
    plot = monitor.plot
    assert plot.steps == list(range(1, 63))
    assert plot.losses[59:] == pytest.approx([first_run_loss(60), resumed_loss(61),
                                              resumed_loss(62)])
    assert (50, "a red circle", 1.0) in monitor.gallery.cells  # the earlier preview too
    assert monitor.progress.value() == 60


def test_the_progress_text_says_paused(monitor) -> None:
    monitor.feed([Started("run", 80), Progress(12, 80, 0, 4.0, 17.0)])
    assert "it/s" in monitor.progress.format()
    monitor.set_paused(True)
    assert monitor.progress.format() == "step 12 / 80 · paused"
    monitor.feed([Progress(13, 80, 0, 3.9, 17.0)])  # the step that was running when paused
    assert monitor.progress.format() == "step 13 / 80 · paused"
    monitor.set_paused(False)
    assert monitor.progress.format() == "step 13 / 80 · epoch 1 · 3.90 it/s · 0:17 left"


def test_the_final_speed_is_the_one_shown_while_training(monitor) -> None:
    monitor.feed([Started("run", 20), Progress(19, 20, 2, 3.5, 0.3)])
    monitor.feed([Progress(20, 20, 2, 4.25, 0.0)])
    shown = monitor.progress.format()
    monitor.feed([Finished("run/my_lora.safetensors", 20)])
    assert "4.25 it/s" in shown
    assert monitor.progress.format() == "step 20 / 20 · finished · 4.25 it/s"


def test_a_constant_learning_rate_gets_a_readable_axis(qtbot, monitor) -> None:
    monitor.show()
    monitor.feed([Started("run", 40)] + [Loss(s, 0.3 / s, 1e-4) for s in range(1, 41)])
    plot = monitor.plot
    plot._draw()
    low, high = plot.lr_view.viewRange()[1]
    assert low == pytest.approx(0.0) and high == pytest.approx(2e-4)
    assert "(x" not in plot.plot.getPlotItem().getAxis("right").labelString()


def test_a_new_run_starts_on_fresh_axes(qtbot, monitor) -> None:
    monitor.show()
    qtbot.waitExposed(monitor)
    monitor.feed([Started("run", 1000)] + [Loss(s, 0.3 / s, 1e-3 / s) for s in range(1, 1001)])
    monitor.plot._draw()
    view = monitor.plot.plot.getPlotItem().vb
    view.setXRange(500, 900)  # the user zoomed in on the end of that run
    monitor.reset()
    assert view.viewRange()[0][1] < 500
    monitor.feed([Started("run", 5)] + [Loss(s, 0.2, 1e-4) for s in range(1, 6)])
    monitor.plot._draw()
    qtbot.waitUntil(lambda: 4 < view.viewRange()[0][1] < 10, timeout=3000)
    assert monitor.plot.lr_view.viewRange()[1][1] == pytest.approx(2e-4)


def test_export_asks_before_replacing_and_says_where_the_file_is(qtbot, tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step-000020").mkdir(parents=True)
    own = run_dir / "my_lora.safetensors"  # the LoRA the run itself wrote
    own.write_bytes(b"the run's own file")
    script = ("import sys; open(sys.argv[1], 'wb').write(b'exported'); "
              "print('LoRA written to', sys.argv[1])")
    monkeypatch.setattr(exporter_module, "export_arguments",
                        lambda binder, checkpoint, out: ["-c", script, str(out)])
    exporter = Exporter(Binder())
    qtbot.addWidget(exporter)
    exporter.set_run_dir(run_dir)
    asked: list[Path] = []
    exporter.ask_replace = lambda path: asked.append(path) is not None  # "Keep the file"
    assert not exporter.export()
    assert asked == [own] and own.read_bytes() == b"the run's own file"
    assert str(own) in exporter.result.text() and not exporter.show_button.isVisibleTo(exporter)
    exporter.ask_replace = lambda path: True
    assert exporter.export()
    qtbot.waitUntil(lambda: exporter.process is None, timeout=10000)
    assert own.read_bytes() == b"exported"
    assert exporter.result.text() == f"Done: the LoRA file is ready at {own}"
    assert exporter.show_button.isVisibleTo(exporter)
    opened: list[QUrl] = []
    exporter.open_url = lambda url: opened.append(url) is None
    qtbot.mouseClick(exporter.show_button, Qt.LeftButton)
    assert opened == [QUrl.fromLocalFile(str(run_dir))]


def network_section(qtbot, model: Path) -> NetworkSection:
    binder = Binder()
    section = NetworkSection(binder)
    qtbot.addWidget(section)
    binder.config.model.path = model
    section.set_model_info(describe_model(model))
    return section


def test_the_network_count_includes_the_text_encoder(qtbot, tmp_path: Path) -> None:
    model = tmp_path / "model"  # SD 1.x settings without a text_encoder folder: CLIP-L's shapes
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    (model / "unet" / "config.json").write_text((ASSETS / "sd15" / "unet" / "config.json").read_text())
    section = network_section(qtbot, model)
    assert section.count.text().startswith("128 U-Net modules, 3,188,736 trainable parameters")
    section.binder.set_value("network", "train_text_encoder", True)
    # 12 CLIP layers x (q, k, v, out 768->768, fc1 768->3072, fc2 3072->768), rank 16
    text_encoder = 12 * 16 * (4 * (768 + 768) + 2 * (768 + 3072))
    assert section.count.text() == (
        f"128 U-Net modules + 72 text-encoder modules, {3_188_736 + text_encoder:,} trainable "
        "parameters (about 11.7 MB at fp16)")
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2  (3072 -> 768" in \
        section.module_list.toPlainText()


def test_a_small_network_is_sized_in_kilobytes(qtbot) -> None:
    section = network_section(qtbot, DEMO_BASE)  # the demo's tiny model and tiny CLIP
    section.binder.set_value("network", "rank", 4)
    section.binder.set_value("network", "train_text_encoder", True)
    text = section.count.text()
    assert "0.0 MB" not in text and text.endswith(" KB at fp16)"), text
    modules = section.modules
    unet = sum(4 * (layer.fan_in + layer.fan_out) for layer in modules)
    text_encoder = 2 * 4 * (4 * (64 + 64) + 2 * (64 + 128))  # 2 layers, 64 wide, MLP 128
    assert f"{unet + text_encoder:,} trainable parameters" in text
    assert f"about {round((unet + text_encoder) * 2 / 1000)} KB" in text


def add_row(gallery: Gallery, step: int) -> None:
    for scale in (0.0, 0.8):
        assert gallery.add(Sample(step, "a red circle", 1, scale, png_bytes=png()))


def test_the_gallery_follows_the_newest_row_until_scrolled_up(qtbot) -> None:
    gallery = Gallery()
    qtbot.addWidget(gallery)
    gallery.resize(420, 300)
    gallery.show()
    qtbot.waitExposed(gallery)
    bar = gallery.verticalScrollBar()
    for step in range(10, 70, 10):
        add_row(gallery, step)
    qtbot.waitUntil(lambda: bar.maximum() > 0 and bar.value() == bar.maximum(), timeout=3000)
    bar.setValue(0)  # the user scrolls up to an early row
    before = bar.maximum()
    add_row(gallery, 70)
    qtbot.waitUntil(lambda: bar.maximum() > before, timeout=3000)
    assert bar.value() == 0
    bar.setValue(bar.maximum())  # back at the bottom: following again
    before = bar.maximum()
    add_row(gallery, 80)
    qtbot.waitUntil(lambda: bar.maximum() > before and bar.value() == bar.maximum(), timeout=3000)


def test_the_zoom_view_names_the_step_and_the_strength(qtbot) -> None:
    gallery = Gallery()
    qtbot.addWidget(gallery)
    add_row(gallery, 30)
    dialog = gallery.enlarge(gallery.cells[(30, "a red circle", 0.8)])
    texts = [label.text() for label in dialog.findChildren(QLabel)]
    assert any("step 30" in text and "LoRA strength 0.8" in text for text in texts), texts
    dialog.close()
    baseline = gallery.enlarge(gallery.cells[(30, "a red circle", 0.0)])
    assert any("without LoRA (strength 0)" in label.text()
               for label in baseline.findChildren(QLabel))
    baseline.close()

