"""Every section edits the config it shows; settings survive a round trip through a preset file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QLineEdit, QPlainTextEdit

from app.main import MainWindow
from app.model_info import describe_model, network_parameter_count, selected_modules
from synthetic import make_shapes_dataset
from trainer.config import NetworkConfig

SD15_UNET = Path(__file__).resolve().parent.parent / "assets" / "sd15" / "unet" / "config.json"


def edit(window: MainWindow, key: str, value) -> None:
    """Change a bound widget the way a user would (the widget's user signal fires)."""
    widget = window.binder.widget(key)
    if isinstance(widget, QCheckBox):
        widget.setChecked(value)
    elif isinstance(widget, QComboBox):
        widget.setCurrentIndex(widget.findData(value))
    elif isinstance(widget, QPlainTextEdit):
        widget.setPlainText(value)
    elif isinstance(widget, QLineEdit):
        widget.setText(str(value))
        widget.textEdited.emit(str(value))
    else:
        widget.setValue(value)


EDITS = {  # section page -> (widget key, value typed, value expected in the config)
    "Dataset": [("dataset.caption_extension", ".caption", ".caption"),
                ("dataset.trigger_word", "zzstyle", "zzstyle"),
                ("dataset.resolution", 768, 768), ("dataset.batch_size", 2, 2),
                ("dataset.enable_bucket", False, False), ("dataset.flip_aug", True, True)],
    "Network": [("network.rank", 32, 32), ("network.alpha", 8.0, 8.0),
                ("network.dropout", 0.1, 0.1), ("network.train_text_encoder", True, True),
                ("network.text_encoder_lr", "5e-5", 5e-5)],
    "Training": [("schedule.max_train_steps", "300", 300),
                 ("optimizer.learning_rate", "2e-4", 2e-4), ("optimizer.type", "Prodigy", "Prodigy"),
                 ("schedule.lr_scheduler", "cosine", "cosine"), ("schedule.lr_warmup_steps", 25, 25),
                 ("schedule.seed", 7, 7), ("precision.gradient_checkpointing", True, True),
                 ("precision.cache_latents", False, False), ("loss.min_snr_gamma", "5", 5.0)],
    "Samples": [("sampling.prompts", "a red circle\na blue square --d 3",
                 ["a red circle", "a blue square --d 3"]),
                ("sampling.every_n_steps", "50", 50), ("sampling.steps", 12, 12)],
    "Export": [("output.name", "my_shapes", "my_shapes"), ("metadata.title", "Shapes", "Shapes"),
               ("metadata.author", "An Artist", "An Artist"),
               ("metadata.description", "Circles & squares", "Circles & squares"),
               ("metadata.trigger_phrase", "zzstyle", "zzstyle"),
               ("metadata.tags", "shapes, test", ["shapes", "test"]),
               ("metadata.license", "CC-BY-4.0", "CC-BY-4.0"),
               ("output.save_precision", "bf16", "bf16"),
               ("metadata.hide_folder_names", True, True)],
}


def value_of(config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def test_every_section_round_trips_through_a_preset_file(qtbot, tmp_path: Path) -> None:
    images = tmp_path / "5_shapes"
    make_shapes_dataset(images, 4)
    window = MainWindow()
    qtbot.addWidget(window)
    window.dataset.table.add_row(images, 3)
    window.model.set_path(str(tmp_path / "missing-model"))
    for section, edits in EDITS.items():
        window.show_section(section)
        for key, typed, expected in edits:
            edit(window, key, typed)
            assert value_of(window.config, key) == expected, key
    window.network.apply_target_preset("cross-attention only")
    assert window.config.network.attention == ["attn2"]
    assert window.binder.errors == {}
    assert window.config.dataset.folders[0].repeats == 3
    qtbot.waitUntil(lambda: "12 images seen per epoch" in window.dataset.calculator.text(),
                    timeout=30_000)

    preset = tmp_path / "mine.toml"
    window.save_config_file(preset, only_changes=True)
    other = MainWindow()
    qtbot.addWidget(other)
    assert other.load_config_file(preset)
    for edits in EDITS.values():
        for key, _, expected in edits:
            assert value_of(other.config, key) == expected, key
    assert other.config.dataset.folders[0].path == images
    assert other.config.network.attention == ["attn2"]
    assert other.binder.widget("network.rank").value() == 32
    assert other.binder.widget("metadata.tags").text() == "shapes, test"
    assert other.dataset.table.rowCount() == 1
    leaves = other.network.tree.leaves  # no model: the SD 1.x blocks
    assert leaves["up.1.attn2.to_q"].checkState(0) == Qt.Checked
    assert leaves["up.3.attn1.to_q"].checkState(0) == Qt.Unchecked


def test_a_bad_value_shows_next_to_its_field_and_blocks_start(qtbot, tmp_path: Path) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    edit(window, "dataset.resolution", 100)
    assert "multiple of 64" in window.binder.errors["dataset.resolution"]
    label = window.findChild(object, "error:dataset.resolution")
    assert label.isVisibleTo(window.dataset) and "64" in label.text()
    assert window.config.dataset.resolution == 512  # the config keeps its last good value
    assert not window.run.start_button.isEnabled()
    assert "resolution" in window.run.reason.text()
    edit(window, "dataset.resolution", 640)
    assert "dataset.resolution" not in window.binder.errors
    edit(window, "output.name", "bad/name")
    assert "output.name" in window.binder.errors
    edit(window, "dataset.min_bucket_reso", 2048)  # a rule across two fields
    assert "larger than" in window.binder.errors["dataset.min_bucket_reso"]
    assert window.config.dataset.min_bucket_reso == 256


def test_built_in_presets_load_into_the_widgets(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    names = [a.text() for a in window.presets_menu.actions()]
    assert "tiny-cpu" in names
    window.load_preset("tiny-cpu")
    assert window.binder.widget("network.rank").value() == 4
    assert window.binder.widget("dataset.resolution").value() == 64
    assert window.network.scale.text().endswith("= 1")


def test_target_tree_and_module_count_follow_the_unet_config(qtbot, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text(SD15_UNET.read_text())
    window = MainWindow()
    qtbot.addWidget(window)
    window.model.set_path(str(folder))
    assert "no U-Net weights" in window.model.detected.text() and not window.model.info.usable
    assert "cannot" not in window.network.count.text()  # the count needs only the config
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    window.model.set_path(str(folder))
    assert "1.x" in window.model.detected.text() and window.model.info.usable
    edit(window, "network.rank", 16)
    assert "128 U-Net modules, 3,188,736 trainable parameters" in window.network.count.text()
    window.network.apply_target_preset("self-attention only")
    assert "64 U-Net modules" in window.network.count.text()
    assert len(window.network.module_list.toPlainText().splitlines()) == 64
    assert "attn2" not in window.network.module_list.toPlainText()
    tree = window.network.tree
    assert list(tree.block_items) == ["down.0", "down.1", "down.2", "mid", "up.1", "up.2", "up.3"]
    tree.block_items["down.0"].setCheckState(0, Qt.Unchecked)  # one block: written per block
    assert window.config.network.blocks == ["down.1", "down.2", "mid", "up"]
    assert "56 U-Net modules" in window.network.count.text()  # 64 - 2 transformers x 4 (attn1)
    for key in ("down.1", "down.2"):
        tree.block_items[key].setCheckState(0, Qt.Unchecked)  # every down block
    assert window.config.network.blocks == ["mid", "up"]
    assert window.config.network.targets is None  # still a product: kept in the old form
    for index in range(tree.topLevelItemCount()):
        tree.topLevelItem(index).setCheckState(0, Qt.Unchecked)
    assert "network.targets" in window.binder.errors  # none ticked: refused, shown
    assert "at least one" in window.network.tree_error.text()


def test_one_leaf_of_the_target_tree_round_trips_through_a_preset_file(qtbot, tmp_path: Path) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.model.set_path(str(SD15_UNET.parent.parent))  # configs are enough for the count
    edit(window, "network.rank", 16)
    assert "128 U-Net modules, 3,188,736 trainable parameters" in window.network.count.text()
    leaf = window.network.tree.leaves["down.1.attn1.to_q"]
    leaf.setCheckState(0, Qt.Unchecked)  # one block's query: written for that block alone
    targets = window.config.network.targets
    assert len(targets) == 25 and "down.0.attn1.to_q" in targets and "down.2.attn1.to_q" in targets
    assert "down.attn1.to_q" not in targets and "up.attn1.to_q" in targets
    # down block 1's two 640-wide transformer blocks lose a 640 -> 640 query: 16 x 1280 each
    assert "126 U-Net modules, 3,147,776 trainable parameters" in window.network.count.text()
    assert leaf.parent().checkState(0) == Qt.PartiallyChecked  # down.1 > attn1
    assert leaf.parent().parent().checkState(0) == Qt.PartiallyChecked  # down.1
    for block in ("down.0", "down.2"):  # attn1 q everywhere but in the down blocks
        window.network.tree.leaves[f"{block}.attn1.to_q"].setCheckState(0, Qt.Unchecked)
    targets = window.config.network.targets
    assert len(targets) == 23 and not any(t.startswith("down.") and t.endswith("attn1.to_q")
                                          for t in targets)
    assert "down.attn1.to_k" in targets  # ticked in every down block: written for the kind
    # 6 down transformer blocks (two each 320, 640, 1280 wide) lose a w -> w query: 16 x 2w each
    assert "122 U-Net modules, 3,045,376 trainable parameters" in window.network.count.text()

    preset = tmp_path / "one-leaf.toml"
    window.save_config_file(preset, only_changes=True)
    assert "targets = [" in preset.read_text() and "blocks" not in preset.read_text()
    other = MainWindow()
    qtbot.addWidget(other)
    other.model.set_path(str(SD15_UNET.parent.parent))
    assert other.load_config_file(preset)
    assert other.config.network.targets == targets
    leaves = other.network.tree.leaves
    assert [leaves[f"down.{i}.attn1.to_q"].checkState(0) for i in range(3)] == [Qt.Unchecked] * 3
    assert leaves["down.2.attn1.to_k"].checkState(0) == Qt.Checked
    assert other.network.count.text() == window.network.count.text()
    for i in range(3):
        leaves[f"down.{i}.attn1.to_q"].setCheckState(0, Qt.Checked)
    assert other.config.network.targets is None  # every leaf again: back to the plain product
    assert other.config.network.blocks == ["down", "mid", "up"]


def test_single_blocks_from_a_file_show_on_their_own_block_and_survive_an_edit(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.binder.set_value("network", "targets", ["down.1.attn2.to_k", "up.attn2.to_k"])
    window.binder.load(window.config)
    tree = window.network.tree
    leaves = tree.leaves
    assert leaves["down.1.attn2.to_k"].checkState(0) == Qt.Checked
    assert leaves["down.0.attn2.to_k"].checkState(0) == Qt.Unchecked
    assert tree.block_items["down.1"].checkState(0) == Qt.PartiallyChecked
    assert [leaves[f"up.{i}.attn2.to_k"].checkState(0) for i in (1, 2, 3)] == [Qt.Checked] * 3
    leaves["mid.attn2.to_k"].setCheckState(0, Qt.Checked)
    network = window.config.network
    assert network.targets is None and network.attention == ["attn2"]
    assert network.blocks == ["down.1", "mid", "up"] and network.projections == ["to_k"]


def write_safetensors_header(path: Path, keys: list[str]) -> None:
    header = json.dumps({k: {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}
                         for k in keys}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")


@pytest.mark.parametrize("key, needle", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "looks like a LoRA"),
    ("cond_stage_model.transformer.text_model.embeddings.position_ids", "text encoder alone"),
    ("encoder.down.0.block.0.conv1.weight", "is a VAE"),
])
def test_a_file_that_is_no_base_model_is_named_in_the_section(qtbot, tmp_path: Path, key: str,
                                                              needle: str) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors_header(path, [key])
    info = describe_model(path)  # the trainer's detection, read from the header alone
    assert needle in info.message and not info.usable and info.family == ""
    window = MainWindow()
    qtbot.addWidget(window)
    window.model.set_path(str(path))
    assert needle in window.model.detected.text()
    assert not window.model.family.isVisibleTo(window.model)  # no family to show
    assert info.message in window.start_problems()
    assert window.config.dataset.resolution == 512  # nothing moved


def test_module_count_rules() -> None:
    unet = json.loads(SD15_UNET.read_text())
    every = selected_modules(unet, NetworkConfig())  # the default: every attention projection
    assert len(every) == 16 * 8  # 6 down + 1 mid + 9 up transformer blocks × 8 projections
    up_cross = selected_modules(unet, NetworkConfig(blocks=["up"], attention=["attn2"],
                                                    projections=["to_k"]))
    assert len(up_cross) == 9 and all(layer.fan_in == 768 for layer in up_cross)
    down_1 = NetworkConfig(blocks=["down.1"], attention=["attn1"], projections=["to_q"])
    assert network_parameter_count(selected_modules(unet, down_1),
                                   down_1.model_copy(update={"rank": 4})) == 2 * 4 * (640 + 640)


def test_the_health_report_lists_a_bad_file(qtbot, tmp_path: Path) -> None:
    from synthetic import add_bad_files

    images = tmp_path / "images"
    make_shapes_dataset(images, 3)
    reasons = add_bad_files(images)
    window = MainWindow()
    qtbot.addWidget(window)
    window.dataset.table.add_row(images)
    report = window.dataset.health
    with qtbot.waitSignal(report.done, timeout=30_000) as blocker:
        report.check()
    assert blocker.args == [len(reasons)]
    for name, word in reasons.items():
        assert any(name in line and word in line for line in report.skipped), report.skipped
    assert "3 for training" in report.summary.text()


def test_thumbnails_load_in_the_background_and_captions_save(qtbot, tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_shapes_dataset(images, 6)
    (images / "broken.png").write_text("not an image")
    window = MainWindow()
    qtbot.addWidget(window)
    grid = window.dataset.thumbnails
    with qtbot.waitSignal(grid.loaded_all, timeout=10_000):
        window.dataset.table.add_row(images)
    assert grid.model.rowCount() == 7 and grid.loaded == 7
    broken = grid.model.index(grid.model.row_of("broken.png"))
    assert "can't be read" in broken.data(Qt.ToolTipRole)
    grid.select("img01.png")
    assert grid.caption.toPlainText() == "a green circle, white background"
    grid.caption.setPlainText("a green circle, zzshapes")
    assert grid.save_caption() == images / "img01.txt"
    assert (images / "img01.txt").read_text().strip() == "a green circle, zzshapes"


def test_folders_can_be_dropped_on_the_list(qtbot, tmp_path: Path) -> None:
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    images = tmp_path / "3_dropped"
    make_shapes_dataset(images, 2)
    window = MainWindow()
    qtbot.addWidget(window)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(images)), QUrl.fromLocalFile(str(images / "img00.png"))])
    event = QDropEvent(QPointF(5, 5), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    window.dataset.table.dropEvent(event)
    assert [f.path for f in window.config.dataset.folders] == [images]  # files are not folders
    qtbot.waitUntil(  # 2 × kohya prefix 3
        lambda: "6 images seen per epoch" in window.dataset.calculator.text(), timeout=30_000)


def test_a_big_folder_lists_at_once_and_loads_in_the_background(qtbot, tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "big"
    images.mkdir()
    tile = Image.new("RGB", (256, 256), (200, 100, 50))
    for index in range(400):
        tile.save(images / f"{index:04d}.png")
    window = MainWindow()
    qtbot.addWidget(window)
    grid = window.dataset.thumbnails
    with qtbot.waitSignal(grid.listed, timeout=30_000):
        window.dataset.table.add_row(images)
        assert grid.model.rowCount() == 0  # listed in the background too
    assert grid.model.rowCount() == 400 and grid.loaded < 400  # listed at once, decoded later
    with qtbot.waitSignal(grid.loaded_all, timeout=30_000):
        pass
    assert grid.loaded == 400 and grid.count.text() == "400 images"


def test_a_folder_over_the_listing_limit_says_how_many_are_shown(qtbot, tmp_path: Path,
                                                                  monkeypatch) -> None:
    import app.thumbnails

    monkeypatch.setattr(app.thumbnails, "MAX_LISTED", 5)
    make_shapes_dataset(tmp_path / "many", 8)
    window = MainWindow()
    qtbot.addWidget(window)
    grid = window.dataset.thumbnails
    with qtbot.waitSignal(grid.loaded_all, timeout=10_000):
        window.dataset.table.add_row(tmp_path / "many")
    assert grid.model.rowCount() == 5 and grid.loaded == 5
    assert grid.count.text() == "8 images (the first 5 are shown)"
    qtbot.waitUntil(lambda: "8 images seen per epoch" in window.dataset.calculator.text(),
                    timeout=30_000)  # all of them train


def test_folders_are_counted_in_the_background_with_kohya_subfolders(qtbot,
                                                                      tmp_path: Path) -> None:
    """The table and calculator wait for the health report's scan (in a child process: a big
    folder on the GUI thread froze it); images in `N_name` subfolders count N times, other
    subfolders not at all."""
    make_shapes_dataset(tmp_path / "set", 2)
    make_shapes_dataset(tmp_path / "set" / "4_style", 3)
    make_shapes_dataset(tmp_path / "set" / "extras", 5)
    window = MainWindow()
    qtbot.addWidget(window)
    table, calculator = window.dataset.table, window.dataset.calculator
    with qtbot.waitSignal(window.dataset.health.done, timeout=30_000):
        table.add_row(tmp_path / "set", 2)
        assert table.item(0, 1).text() == "…"
        assert calculator.text() == "Counting the images..."
    assert table.item(0, 1).text() == "5"  # 2 + 3; the 5 in extras/ are not trained on
    assert "16 images seen per epoch" in calculator.text()  # 2 × 2 + 3 × 4


def test_a_folder_keeps_what_the_table_does_not_show(qtbot, tmp_path: Path) -> None:
    """A config file's regularisation folder and class tokens survive an edit of its repeats
    in the table (the table used to rebuild each folder from its path and repeats alone)."""
    from app.binding import Binder
    from app.sections_setup import DatasetSection
    from trainer.config import DatasetConfig, DatasetFolder, TrainConfig

    reg = DatasetFolder(path=tmp_path / "reg", is_reg=True, class_tokens="a dog",
                        caption_extension=".caption")
    binder = Binder(TrainConfig(dataset=DatasetConfig(folders=[
        DatasetFolder(path=tmp_path / "train"), reg])))
    section = DatasetSection(binder)
    qtbot.addWidget(section)
    section.table.cellWidget(1, 2).setValue(4)
    kept = binder.config.dataset.folders[1]
    assert (kept.repeats, kept.is_reg, kept.class_tokens, kept.caption_extension) == (
        4, True, "a dog", ".caption")
    section.table.add_row(tmp_path / "more")
    assert [f.is_reg for f in binder.config.dataset.folders] == [False, True, False]
