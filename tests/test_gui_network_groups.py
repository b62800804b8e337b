"""#16 in the window: the Layers choice (attention, kohya's set, LoCon) and the conv rank show
in the tree and the count exactly what the trainer trains; layers picked one by one keep their
picks while a group is added or dropped."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QLineEdit, QSpinBox

from test_gui_model_family import real_layout_folder, window_for
from test_network_groups import SD15_CONV, SD15_TRANSFORMER
from test_network_kinds import count_on_meta


def choose_layers(window, text: str) -> None:
    box = window.network.findChild(QComboBox, "network.modules")
    assert box.findText(text) >= 0, text
    box.setCurrentIndex(box.findText(text))  # as a click on the choice does


def trainer_count(config) -> tuple[int, int]:
    """(modules, parameters) the trainer builds on the real SD 1.x U-Net (meta device)."""
    return count_on_meta("sd1", config.network)


def test_locon_in_the_window_is_counted_as_the_trainer_trains_it(qtbot, tmp_path: Path) -> None:
    window = window_for(qtbot)
    network = window.network
    window.model.set_path(str(real_layout_folder(tmp_path, "sd1")))
    assert not network.form.isRowVisible(network.conv_rank)  # no convolutions: no conv rank
    assert "down.3" not in network.tree.block_items  # no attention there

    choose_layers(window, "kohya's set + convolutions (LoCon)")
    assert window.config.network.modules == ["transformer", "conv"]
    assert network.form.isRowVisible(network.conv_rank)
    edit = network.conv_rank.findChild(QLineEdit)
    edit.setText("8")
    edit.textEdited.emit("8")  # as typing does
    window.binder.set_value("network", "alpha", 8.0)
    assert window.config.network.conv_rank == 8
    modules, parameters = trainer_count(window.config)
    assert (modules, parameters) == (192 + SD15_CONV[0], SD15_TRANSFORMER + SD15_CONV[1])
    assert network.count.text().startswith(f"{modules} U-Net modules, {parameters:,} trainable")
    assert "ResNets only" in network.tree.block_items["down.3"].text(0)
    assert "down.3.conv1" in network.tree.leaves and "mid.proj_in" in network.tree.leaves
    listed = network.module_list.toPlainText()
    assert "lora_unet_down_blocks_0_resnets_0_conv1  (320 -> 320, 3x3, rank 8, " \
           f"{8 * (9 * 320 + 320):,} parameters)" in listed

    # one layer unticked: the settings list layers one by one, the count drops by that layer
    network.tree.leaves["down.3.conv1"].setCheckState(0, Qt.Unchecked)
    assert window.config.network.targets is not None
    assert "down.3.conv1" not in window.config.network.targets
    fewer = trainer_count(window.config)
    assert fewer == (modules - 2, parameters - 2 * 8 * (9 * 1280 + 1280))  # its two ResNets
    assert network.count.text().startswith(f"{fewer[0]} U-Net modules, {fewer[1]:,} trainable")

    # back to attention only: the conv picks go, the attention picks stay
    choose_layers(window, "Attention layers (default)")
    targets = window.config.network.targets
    assert targets is not None and not any("conv" in t or "sampler" in t for t in targets)
    assert trainer_count(window.config)[0] == 128
    assert not network.form.isRowVisible(network.conv_rank)
    assert "down.3" not in network.tree.block_items


def choose_kind(window, label: str) -> None:
    box = window.network.findChild(QComboBox, "network.kind")
    assert box.findText(label) >= 0, label
    box.setCurrentIndex(box.findText(label))


def test_each_kind_in_the_window_shows_its_options_and_the_trainers_count(qtbot,
                                                                         tmp_path: Path) -> None:
    window = window_for(qtbot)
    network = window.network
    window.model.set_path(str(real_layout_folder(tmp_path, "sd1")))
    rows = network.kind_rows
    for label, kind, options in (("LoHa", "loha", {"rank_dropout", "module_dropout",
                                                   "use_tucker"}),
                                 ("LoKr", "lokr", {"lokr_factor", "decompose_both", "use_tucker",
                                                   "rank_dropout", "module_dropout"}),
                                 ("DoRA", "dora", set()), ("LoRA", "lora", set())):
        choose_kind(window, label)
        assert window.config.network.kind == kind
        shown = {name for name, row in rows.items() if network.form.isRowVisible(row)}
        assert shown == options, kind
        assert network.form.isRowVisible(network.dropout) == (kind in ("lora", "dora"))
        assert network.kind_note.text().startswith(
            {"loha": "LyCORIS' Hadamard", "lokr": "LyCORIS' Kronecker", "dora": "LoRA that also",
             "lora": "The standard"}[kind])
        modules, parameters = trainer_count(window.config)
        assert network.count.text().startswith(f"{modules} U-Net modules, {parameters:,} "
                                               "trainable"), (kind, network.count.text())

    # LoKr with a factor of its own, then back to LoRA: the factor goes back to auto (it would
    # be refused for LoRA), nothing else moves
    choose_kind(window, "LoKr")
    rows["lokr_factor"].findChild(QSpinBox).setValue(8)
    assert window.config.network.lokr_factor == 8
    lokr = trainer_count(window.config)
    choose_kind(window, "LoRA")
    assert (window.config.network.kind, window.config.network.lokr_factor) == ("lora", -1)
    assert not window.binder.errors
    choose_kind(window, "LoKr")
    assert trainer_count(window.config) != lokr  # auto factor: another size


def test_the_export_section_says_where_the_runs_kind_loads(qtbot, tmp_path: Path) -> None:
    from app.binding import Binder
    from app.exporter import Exporter

    exporter = Exporter(Binder())
    qtbot.addWidget(exporter)
    texts = {}
    for kind in ("lora", "dora", "lokr"):
        run = tmp_path / kind
        (run / "checkpoints" / "step-000004").mkdir(parents=True)
        (run / "config.toml").write_text(f'schema_version = 1\n[network]\nkind = "{kind}"\n')
        exporter.set_run_dir(run)
        texts[kind] = exporter.loads_in.text()
        assert exporter.loads_in.isVisibleTo(exporter)
    assert texts["lora"].startswith("LoRA file. Loads as trained in A1111/Forge, ComfyUI, "
                                    "diffusers")
    assert texts["dora"].startswith("DoRA file. DoRA loads as trained in LyCORIS;")
    assert "diffusers refuses LoKr" in texts["lokr"]
    exporter.set_run_dir(tmp_path / "nothing")  # no config: nothing claimed
    assert not exporter.loads_in.isVisibleTo(exporter)


def test_rows_shown_by_a_kind_never_overlap_the_tree(qtbot) -> None:
    """Showing LoKr's four option rows and a two-line note made the scroll area keep too small
    a page (it sizes by minimumSizeHint, which ignores wrapped lines): the rows under the layer
    tree were drawn over it."""
    from PySide6.QtWidgets import QApplication, QFormLayout

    window = window_for(qtbot)
    window.resize(1366, 768)
    window.show()
    window.show_section("Network")
    for name, value in (("kind", "lokr"), ("modules", ["transformer", "conv"])):
        for _ in range(10):
            QApplication.processEvents()
        window.binder.set_value("network", name, value)  # as a settings file or preset does
        window.binder.load(window.config)
    for _ in range(20):
        QApplication.processEvents()
    form = window.network.form
    fields = [form.itemAt(row, QFormLayout.FieldRole).widget() for row in range(form.rowCount())
              if form.isRowVisible(row) and form.itemAt(row, QFormLayout.FieldRole)]
    boxes = [widget.geometry() for widget in fields if widget is not None]
    overlaps = [(a.bottom(), b.top()) for a, b in zip(boxes, boxes[1:]) if a.bottom() >= b.top()]
    assert not overlaps and len(boxes) > 15


def test_picks_one_by_one_survive_groups_and_files(qtbot, tmp_path: Path) -> None:
    """Adding the conv group to layers picked one by one adds only layers the blocks have (the
    middle block has no sampler: the trainer refused the run); a file's picks are shown as they
    are, also layers of a group its modules do not name (they train all the same)."""
    window = window_for(qtbot)
    network = window.network
    window.model.set_path(str(real_layout_folder(tmp_path, "sd1")))
    network.tree.leaves["down.1.attn1.to_q"].setCheckState(0, Qt.Unchecked)
    choose_layers(window, "Attention + convolutions (LoCon)")
    targets = window.config.network.targets
    assert "mid.conv1" in targets and "down.downsampler" in targets
    assert not {"mid.downsampler", "mid.upsampler", "up.downsampler"} & set(targets)
    assert network.problems() == []
    assert trainer_count(window.config)[0] == 128 - 2 + SD15_CONV[0]  # and the trainer agrees

    # a file: conv group picked, every conv layer unticked; opened, it stays so
    from trainer.config import TrainConfig

    saved = window.config.model_copy(deep=True)
    saved.network.targets = [t for t in targets if "attn" in t]
    window.binder.load(saved)
    assert window.config.network.targets == saved.network.targets
    # a file naming a conv layer with modules = ["attention"]: the tree shows and keeps it
    other = TrainConfig.model_validate(saved.model_dump())
    other.network.modules = ["attention"]
    other.network.targets = ["up.attn2.to_k", "down.0.conv1"]
    window.binder.load(other)
    assert network.tree.leaves["down.0.conv1"].checkState(0) == Qt.Checked
    network.tree.leaves["mid.attn1.to_q"].setCheckState(0, Qt.Checked)  # an edit elsewhere
    assert "down.0.conv1" in window.config.network.targets
