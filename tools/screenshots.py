"""Screenshots of every section of the real window, for docs/screenshots/ and the README.

    python tools/screenshots.py            # under X (e.g. `xvfb-run -s "-screen 0 1366x768x24"`)
    python tools/screenshots.py --offscreen  # no display at all: Qt's offscreen platform

The window is sized for a 1366x768 laptop, filled with a small shapes dataset, the SD 1.5
configs from assets/ as the base model (so the architecture and layer count show), and a
recorded run (loss curve, previews) replayed into the Run section; then DARK_SECTIONS again
with a dark palette (dark-*.png). No torch is imported.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DARK_SECTIONS = ("Network", "Run")  # again in a dark palette: the tree, the plot, the gallery
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def demo_run(run_dir: Path, prompts: list[str], total: int = 300) -> Path:
    """A recorded run: a falling noisy loss curve and previews every 100 steps."""
    import random

    from PIL import Image, ImageDraw

    from trainer.events import EventLog, Finished, Log, Loss, Progress, Sample, Saved, Started

    rng = random.Random(0)
    log = EventLog(run_dir)
    log.write(Started(str(run_dir), total))
    log.write(Log("info", "dataset: 12 images, 1 bucket (512x512), 0 skipped"))
    for step in range(1, total + 1):
        loss = 0.09 + 0.08 * math.exp(-step / 80) + rng.uniform(-0.03, 0.03)
        log.write(Loss(step, loss, 1e-4 * min(1.0, step / 30)))
        log.write(Progress(step, total, 1 + step // 12, 3.2, (total - step) / 3.2))
        if step % 100 == 0:
            for index, prompt in enumerate(prompts):
                for scale in (0.0, 1.0):
                    image = Image.new("RGB", (128, 128), (235, 235, 230))
                    draw = ImageDraw.Draw(image)
                    amount = scale * step / total
                    colour = (int(60 + 160 * amount), 90, int(200 - 120 * amount))
                    box = (24, 24, 104, 104)
                    (draw.ellipse if index == 0 else draw.rectangle)(box, fill=colour)
                    buffer = io.BytesIO()
                    image.save(buffer, "PNG")
                    log.write(Sample(step, prompt, 1234 + index, scale, buffer.getvalue()))
            checkpoint = run_dir / "checkpoints" / f"step-{step:06d}"
            checkpoint.mkdir(parents=True, exist_ok=True)  # empty: only the picker lists them
            log.write(Saved(str(checkpoint), "checkpoint", step))
    log.write(Saved(str(run_dir / "my_shapes.safetensors"), "lora", total))
    log.write(Finished(str(run_dir / "my_shapes.safetensors"), total))
    log.close()
    return run_dir


def file_name(section: str) -> str:
    return section.lower().replace(" ", "-")


def shoot(app, window, section: str, file: Path) -> None:
    window.show_section(section)
    for _ in range(5):
        app.processEvents()
    window.grab().save(str(file))
    print(file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--offscreen", action="store_true", help="use Qt's offscreen platform")
    args = parser.parse_args()
    if args.offscreen or not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"

    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    from app.colours import use_style
    from app.main import SECTIONS, MainWindow
    from synthetic import make_shapes_dataset

    app = QApplication.instance() or QApplication(sys.argv)
    use_style(app)  # as app.main.main does
    work = Path(tempfile.mkdtemp(prefix="lora-studio-shots-"))
    make_shapes_dataset(work / "10_shapes", 12)
    window = MainWindow()
    window.resize(1366, 768)
    window.load_preset("sd15-style")
    window.dataset.table.add_row(work / "10_shapes")
    model = work / "sd15"  # the shipped SD 1.5 configs + a stand-in weights file (not read)
    shutil.copytree(ROOT / "assets" / "sd15", model)
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x02" + b"\0" * 7 + b"{}")
    window.model.set_path(str(model))
    prompts = ["a red circle, zzshapes", "a blue square, zzshapes"]
    for section, name, value in (
            ("dataset", "trigger_word", "zzshapes"), ("sampling", "prompts", prompts),
            ("sampling", "every_n_steps", 100), ("output", "name", "my_shapes"),
            ("metadata", "title", "Flat shapes"), ("metadata", "author", "An Artist"),
            ("metadata", "tags", ["shapes", "flat colour"]), ("metadata", "trigger_phrase", "zzshapes"),
            ("metadata", "description", "Bold flat shapes on a pale background.")):
        window.binder.set_value(section, name, value)
    window.binder.load(window.config)
    window.run.runs_folder.setText(str(work / "runs"))
    window.open_run(demo_run(work / "runs" / "my_shapes-demo", prompts))
    cover = sorted((work / "runs" / "my_shapes-demo" / "samples").glob("step000300_01_*"))[0]
    window.binder.set_value("metadata", "cover_image", str(cover))
    window.binder.load(window.config)
    window.show()
    import time

    deadline = time.monotonic() + 30  # let the thumbnails and the health report arrive
    window.dataset.health.check()
    while time.monotonic() < deadline and (window.dataset.health.process is not None
                                           or window.dataset.thumbnails.loaded < 12
                                           or window.training.gpus.pending):
        app.processEvents()
        time.sleep(0.02)
    window.dataset.thumbnails.select("img00.png")
    args.out.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(SECTIONS, 1):
        shoot(app, window, name, args.out / f"{index}-{file_name(name)}.png")
    run_page_states(app, window, work, args.out, "")
    network_states(app, window, args.out)
    two_gpus(app, window, args.out)
    caption_tools(app, window, work, args.out)
    masked_thumbnails(app, window, work, args.out)
    from dark_palette import dark_palette

    app.setPalette(dark_palette())  # as when the system switches to its dark theme
    leaf = window.network.tree.leaves["down.1.attn1.to_q"]  # one layer off: parents partly ticked
    leaf.parent().setExpanded(True)
    leaf.setCheckState(0, Qt.Unchecked)
    for name in DARK_SECTIONS:
        shoot(app, window, name, args.out / f"dark-{file_name(name)}.png")
    run_page_states(app, window, work, args.out, "dark-")
    window.close()
    return 0


def caption_tools(app, window, work: Path, out: Path) -> None:
    """The Dataset section's Caption tools tab: the tiny test tagger's preview of a replace
    (a child runs it), and the folder's tag-frequency table."""
    import time

    from tiny_captioners import make_tagger

    dataset = window.dataset
    dataset.tabs.setCurrentWidget(dataset.caption_tools)
    panel = dataset.caption_tools.model_panel
    panel.model.setText(str(make_tagger(work / "wd14-tagger")))
    panel.mode.setCurrentIndex(panel.mode.findData("append"))
    dataset.caption_tools.remove_tags.setText("white background")
    panel.run(preview=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (dataset.caption_tools.child.running
                                           or dataset.caption_tools.counter.running):
        app.processEvents()
        time.sleep(0.02)
    window.show_section("Dataset")
    app.processEvents()
    dataset.ensureWidgetVisible(dataset.tabs, 0, 0)
    dataset.verticalScrollBar().setValue(dataset.verticalScrollBar().maximum())
    for _ in range(5):
        app.processEvents()
    window.grab().save(str(out / "dataset-caption-tools.png"))
    print(out / "dataset-caption-tools.png")
    dataset.tabs.setCurrentWidget(dataset.thumbnails)


def masked_thumbnails(app, window, work: Path, out: Path) -> None:
    """Masked loss on, each shape's mask in a mask folder (the shape white, the background
    black): the thumbnails shade the background the loss leaves out."""
    import time

    from PIL import Image

    images, masks = work / "10_shapes", work / "shape-masks"
    masks.mkdir()
    for image in sorted(images.glob("*.png")):
        with Image.open(image) as picture:  # the shape is what is not the white background
            grey = picture.convert("L").point(lambda value: 255 if value < 235 else 0)
            grey.save(masks / image.name)
    dataset = window.dataset
    window.binder.set_and_show("dataset", "masked_loss", True)
    dataset.table._show_masks(0, masks)
    dataset.table.on_change()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (dataset.thumbnails.loaded < 12
                                           or dataset.health.pending):
        app.processEvents()
        time.sleep(0.02)
    window.show_section("Dataset")
    app.processEvents()
    dataset.verticalScrollBar().setValue(0)
    for _ in range(5):
        app.processEvents()
    window.grab().save(str(out / "dataset-masks.png"))
    print(out / "dataset-masks.png")
    window.binder.set_and_show("dataset", "masked_loss", False)


def network_states(app, window, out: Path) -> None:
    """The Network section as a LoCon (kohya's set + convolutions, conv rank 8) and as a LoKr;
    the settings go back to plain LoRA after."""
    window.binder.set_value("network", "modules", ["transformer", "conv"])
    window.binder.set_value("network", "conv_rank", 8)
    window.binder.load(window.config)
    window.network.tree.block_items["down.3"].setExpanded(True)
    shoot(app, window, "Network", out / "network-locon.png")
    window.binder.set_value("network", "kind", "lokr")
    window.binder.set_value("network", "lokr_factor", 8)
    window.binder.load(window.config)
    shoot(app, window, "Network", out / "network-lokr.png")
    for name, value in (("kind", "lora"), ("lokr_factor", -1), ("modules", ["attention"]),
                        ("conv_rank", None)):
        window.binder.set_value("network", name, value)
    window.binder.load(window.config)


def two_gpus(app, window, out: Path) -> None:
    """The Training section as a machine with two GPUs shows it: the report the trainer's
    `preflight --json` printed there, replayed (this machine has none), one GPU nearly full."""
    gib = 2 ** 30
    gpu = {"index": 0, "name": "NVIDIA GeForce RTX 4090", "free_bytes": int(22.5 * gib),
           "total_bytes": 24 * gib}
    window.training.gpus._present({
        "devices": [gpu, {**gpu, "index": 1, "free_bytes": int(3.2 * gib)}],
        "estimate": {"text": "about 5.1 GB of GPU memory (model 2.1, LoRA and optimizer 0.0, "
                             "activations 3.0)"},
        "problem": "this run needs about 5.1 GB of GPU memory (model 2.1, LoRA and optimizer "
                   "0.0, activations 3.0), but the GPU has 3.2 GB free: turn on gradient "
                   "checkpointing, use fp16 or bf16, or lower the batch size or resolution"})
    window.binder.set_value("precision", "processes", 2)
    window.binder.load(window.config)
    window.training.gpus._present(window.training.gpus.report)  # the reload rechecks: replay
    shoot(app, window, "Training", out / "training-two-gpus.png")
    window.binder.set_value("precision", "processes", 1)
    window.binder.load(window.config)


def run_page_states(app, window, work: Path, out: Path, prefix: str) -> None:
    """The Run page with a runs folder that can't be made, then with the queue panel showing
    two waiting runs and one that ended."""
    from trainer.job_spec import JobSpec

    runs = window.run.runs_folder.text()
    blocker = work / "not-a-folder.txt"
    blocker.write_text("a file chosen as the runs folder")
    window.run.runs_folder.setText(str(blocker / "runs"))
    shoot(app, window, "Run", out / f"{prefix}run-bad-runs-folder.png")
    window.run.runs_folder.setText(runs)
    panel = window.run.queue_panel
    panel.specs.clear()
    panel.finished.clear()
    panel.add_finished("my_shapes", str(work / "runs" / "my_shapes-demo"), "finished",
                       str(work / "runs" / "my_shapes-demo" / "my_shapes.safetensors"))
    for name, steps in (("my_shapes_r32", 1500), ("my_shapes_lr2", 800)):
        config = window.config.model_copy(deep=True)
        config.output.name, config.schedule.max_train_steps = name, steps
        panel.add(JobSpec.from_config(config, work / "runs" / name))
    shoot(app, window, "Run", out / f"{prefix}run-queue.png")
    panel.specs.clear()
    panel.finished.clear()
    panel.refresh()  # empty again: the panel hides


if __name__ == "__main__":
    sys.exit(main())
