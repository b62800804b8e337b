"""The Base model and Network sections follow the model's family: SD 1.x, SD 2.x and SDXL
single files show their family, prediction type and native size, move the resolution (unless
the user set it), and the layer tree shows the model's own blocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.main import MainWindow
from trainer.config import TrainConfig

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SDXL_BLOCKS = [  # tiny SDXL: transformer depth 1 in down 1 / up 1, 2 in down 2, mid and up 0
    ("down.1", "Down block 1 (input blocks 4, 5) · 2 transformer blocks"),
    ("down.2", "Down block 2 (input blocks 7, 8) · 4 transformer blocks"),
    ("mid", "Middle block · 2 transformer blocks"),
    ("up.0", "Up block 0 (output blocks 0, 1, 2) · 6 transformer blocks"),
    ("up.1", "Up block 1 (output blocks 3, 4, 5) · 3 transformer blocks"),
]
SD1_TINY_BLOCKS = [  # tiny SD 1.x: attention in down 0, 1, mid, up 1, 2
    ("down.0", "Down block 0 · 1 transformer block"),
    ("down.1", "Down block 1 · 1 transformer block"),
    ("mid", "Middle block · 1 transformer block"),
    ("up.1", "Up block 1 · 2 transformer blocks"),
    ("up.2", "Up block 2 · 2 transformer blocks"),
]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny single-file checkpoint per family: {"sd1", "sd2v", "sdxl"} -> .safetensors."""
    from trainer.models import make_tiny_model

    root = tmp_path_factory.mktemp("tiny-families")
    out = {}
    for name, family, prediction in (("sd1", "sd1", "epsilon"), ("sd2v", "sd2", "v_prediction"),
                                     ("sdxl", "sdxl", "epsilon")):
        out[name] = root / f"{name}.safetensors"
        make_tiny_model(root / name, single_file=out[name], family=family,
                        prediction_type=prediction)
    return out


def window_for(qtbot, config: TrainConfig | None = None) -> MainWindow:
    window = MainWindow(config)
    qtbot.addWidget(window)
    return window


def shown_blocks(window: MainWindow) -> list[tuple[str, str]]:
    tree = window.network.tree
    return [(key, item.text(0)) for key, item in tree.block_items.items()]


def test_picking_sdxl_shows_the_family_and_moves_the_resolution(qtbot, tiny_files) -> None:
    window = window_for(qtbot)
    model, config = window.model, window.config
    resolution = window.binder.widget("dataset.resolution")
    assert config.dataset.resolution == 512 and not model.family.isVisibleTo(model)
    window.binder.set_value("sampling", "width", 512)  # set, and following the resolution
    window.binder.set_value("sampling", "height", 640)  # set to something else: kept
    model.set_path(str(tiny_files["sdxl"]))
    assert model.family.text() == "SDXL" and model.family.isVisibleTo(model)
    assert model.native.text() == "1024 × 1024 px"
    assert model.prediction.text() == (
        "noise (epsilon) — assumed: the file has no v_pred key (the mark of a v-prediction "
        "model). If the model card says v-prediction, choose it under Advanced.")
    assert model.info.usable and model.detected.text() == ("SDXL checkpoint file, native 1024 px - "
                                                  "ready to train.")
    assert config.dataset.resolution == 1024 and resolution.value() == 1024
    assert (config.sampling.width, config.sampling.height) == (1024, 640)
    # the default bucket range (256-1024) leaves no room for non-square 1024 px buckets
    assert config.dataset.max_bucket_reso == 2048
    assert window.binder.widget("dataset.max_bucket_reso").value() == 2048
    note = model.follow_note.text()
    assert model.follow_note.isVisibleTo(model)
    assert "Resolution moved from 512 to 1024 px" in note and "1024 to 2048 px" in note
    assert "Preview width moved from 512 to 1024 px" in note
    assert window.start_problems() == ["add a folder of images (Dataset section)"]

    model.set_path(str(tiny_files["sd1"]))  # back to SD 1.x: 1024 was the SDXL size, it follows
    assert model.family.text() == "SD 1.x" and model.native.text() == "512 × 512 px"
    assert config.dataset.resolution == 512 and resolution.value() == 512
    assert config.sampling.width == 512
    assert config.dataset.max_bucket_reso == 2048  # it holds 512: never narrowed
    assert "Resolution moved from 1024 to 512 px" in model.follow_note.text()
    assert window.binder.errors == {}


def test_a_path_typed_letter_by_letter_still_moves_the_resolution(qtbot, tiny_files) -> None:
    window = window_for(qtbot)
    window.model.set_path(str(tiny_files["sdxl"]))
    assert window.config.dataset.resolution == 1024
    path, typed = window.model.path, str(tiny_files["sd1"])
    for end in range(len(typed) - 8, len(typed) + 1):  # "...sd1.safe", "...sd1.safet", ...
        path.setText(typed[:end])
        path.textEdited.emit(typed[:end])
    assert window.model.family.text() == "SD 1.x"
    assert window.config.dataset.resolution == 512


def test_a_resolution_the_user_typed_is_kept(qtbot, tiny_files) -> None:
    window = window_for(qtbot)
    widget = window.binder.widget("dataset.resolution")
    widget.setValue(768)  # typed before any model is picked
    assert window.config.dataset.resolution == 768
    window.model.set_path(str(tiny_files["sdxl"]))
    assert window.model.native.text() == "1024 × 1024 px"
    assert window.config.dataset.resolution == 768 and widget.value() == 768
    assert window.config.dataset.max_bucket_reso == 1024  # nothing moved, nothing widened
    assert not window.model.follow_note.isVisibleTo(window.model)
    window.model.set_path(str(tiny_files["sd1"]))
    assert window.config.dataset.resolution == 768


def test_a_loaded_config_keeps_its_sizes(qtbot, tiny_files) -> None:
    config = TrainConfig()
    config.model.path = tiny_files["sdxl"]
    config.dataset.resolution = 512  # the default, but it comes from a file: not moved
    window = window_for(qtbot, config)
    assert window.model.family.text() == "SDXL"
    assert window.config.dataset.resolution == 512
    config = TrainConfig()
    config.model.path, config.dataset.resolution = tiny_files["sd1"], 640
    window.binder.load(config)  # a settings file: its own 640 px, whatever the model
    assert window.model.family.text() == "SD 1.x"
    assert window.config.dataset.resolution == 640
    assert window.binder.widget("dataset.resolution").value() == 640
    assert not window.model.follow_note.isVisibleTo(window.model)


def test_sd2_v_prediction_is_read_from_the_file_and_can_be_overridden(qtbot, tiny_files) -> None:
    window = window_for(qtbot)
    model, config = window.model, window.config
    model.set_path(str(tiny_files["sd2v"]))
    assert model.family.text() == "SD 2.x (v-prediction)"
    assert model.prediction.text() == "v-prediction — the file has a v_pred key"
    assert model.native.text() == "768 × 768 px" and config.dataset.resolution == 768
    assert config.dataset.max_bucket_reso == 1024  # 256-1024 holds 768: kept
    combo = window.binder.widget("model.prediction_type")
    combo.setCurrentIndex(combo.findData("epsilon"))  # Advanced > Prediction type
    assert model.family.text() == "SD 2.x" and model.native.text() == "512 × 512 px"
    assert model.prediction.text() == ("noise (epsilon) — chosen under Advanced (the model "
                                       "says v-prediction)")
    assert config.dataset.resolution == 512


def test_the_layer_tree_shows_the_models_own_blocks(qtbot, tiny_files) -> None:
    window = window_for(qtbot)
    network = window.network
    assert not network.form.isRowVisible(network.te2_rate)  # one text encoder until SDXL
    no_model = [key for key, _ in shown_blocks(window)]  # the real SD 1.x layout
    assert no_model == ["down.0", "down.1", "down.2", "mid", "up.1", "up.2", "up.3"]
    assert "SD 1.x layout, until a base model is picked" in network.layout_note.text()
    window.model.set_path(str(tiny_files["sdxl"]))
    assert shown_blocks(window) == SDXL_BLOCKS
    assert network.layout_note.text() == "The blocks of this SDXL model."
    tip = network.tree.block_items["down.2"].toolTip(0)
    assert "2 × 2 transformer blocks (2 stacks, 2 deep), 32 projections in all" in tip
    assert "136 U-Net modules" in network.count.text()  # 16 + 32 + 16 + 48 + 24
    assert network.form.isRowVisible(network.te2_rate)  # SDXL: a rate for each text encoder
    network.te2_rate_edit.setText("2e-5")
    network.te2_rate_edit.textEdited.emit("2e-5")  # as typing does
    assert window.binder.config.network.text_encoder_2_lr == 2e-5
    listed = [line.split()[0] for line in network.module_list.toPlainText().splitlines()]
    assert len(listed) == 136 and listed[0] == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_out_0" in listed  # SGM names
    assert not any("down_blocks" in name for name in listed)
    network.tree.block_items["up.0"].setCheckState(0, Qt.Unchecked)
    assert window.config.network.blocks == ["down", "mid", "up.1"]
    assert window.config.network.targets is None
    assert "88 U-Net modules" in network.count.text()
    window.model.set_path(str(tiny_files["sd1"]))
    assert shown_blocks(window) == SD1_TINY_BLOCKS
    # "up.1" is a block of this model too: the tree shows what the settings select there
    assert network.tree.block_items["up.1"].checkState(0) == Qt.Checked
    assert network.tree.block_items["up.2"].checkState(0) == Qt.Unchecked
    assert network.problems() == []


def test_settings_naming_a_block_the_model_lacks_are_said(qtbot, tiny_files) -> None:
    window = window_for(qtbot)
    window.binder.set_value("network", "targets", ["down.0.attn1.to_q", "up.attn2.to_k"])
    window.model.set_path(str(tiny_files["sdxl"]))  # SDXL's down block 0 has no attention
    network = window.network
    assert "Not in this SDXL model, so not shown above: down.0.attn1.to_q" \
        in network.tree_error.text()
    assert network.problems() == [("network.targets: down.0.attn1.to_q name no layer of this "
                                   "SDXL model (Network section)")]
    assert network.problems()[0] in window.start_problems()
    network.tree.leaves["mid.attn1.to_q"].setCheckState(0, Qt.Checked)  # an edit drops it
    assert window.config.network.targets == ["mid.attn1.to_q", "up.attn2.to_k"]
    assert network.problems() == [] and network.tree_error.text() == ""
    window.binder.set_value("network", "targets", None)
    window.binder.set_value("network", "blocks", ["down.0", "mid"])  # a block product
    assert network.tree_error.text() == ("Not in this SDXL model, so not shown above: down.0 "
                                         "(ignored)")
    assert network.problems() == []  # the middle block still takes adapters
    assert "16 U-Net modules" in network.count.text()
    window.binder.set_value("network", "blocks", ["down.0"])
    assert network.problems() == ["the target layers pick no layer of this SDXL model "
                                  "(Network section)"]


def real_layout_folder(root: Path, family: str) -> Path:
    """A diffusers folder with the family's real configs and an empty U-Net weights file:
    enough for the window to describe it and count its layers."""
    source = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}[family]
    folder = root / family
    shutil.copytree(ASSETS / source, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert json.loads((folder / "unet" / "config.json").read_text())  # the real layout
    return folder


@pytest.mark.parametrize("family, text", [  # the trainer's counts (tests/test_network_targets.py)
    ("sdxl", "560 U-Net modules, 23,224,320 trainable parameters"),
    ("sd2", "128 U-Net modules, 3,319,808 trainable parameters"),
])
def test_the_window_counts_the_real_layouts_as_the_trainer_does(qtbot, tmp_path: Path,
                                                                family: str, text: str) -> None:
    window = window_for(qtbot)
    window.model.set_path(str(real_layout_folder(tmp_path, family)))
    assert window.model.info.family == family and window.model.info.usable
    assert window.config.network.rank == 16
    assert text in window.network.count.text()
    assert len(window.network.module_list.toPlainText().splitlines()) == int(text.split()[0])
