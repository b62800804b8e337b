"""The Network section: rank, alpha, dropout, which attention layers get a LoRA, and the count."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QHBoxLayout, QLineEdit, QPlainTextEdit, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QWidget)

from app.binding import Binder, dspin, number_edit, spin
from app.colours import ERROR, set_tone
from app.forms import Folding, Page, plain_label
from app.model_info import ModelInfo, lora_parameter_count, selected_modules
from trainer.config import TARGET_PATTERN, NetworkConfig

BLOCKS = [("down", "Down blocks (coarse layout, composition)"),
          ("mid", "Middle block"),
          ("up", "Up blocks (details, style)")]
ATTENTION = [("attn1", "Self-attention (attn1)", "How the image relates to itself."),
             ("attn2", "Cross-attention (attn2)", "How the words of the prompt steer the image.")]
PROJECTIONS = [("to_q", "q (query)"), ("to_k", "k (key)"), ("to_v", "v (value)"),
               ("to_out.0", "out (output)")]
ALL_PROJECTIONS = [value for value, _ in PROJECTIONS]
TARGET_PRESETS = {
    "attention (all)": (["down", "mid", "up"], ["attn1", "attn2"], ALL_PROJECTIONS),
    "cross-attention only": (["down", "mid", "up"], ["attn2"], ALL_PROJECTIONS),
    "self-attention only": (["down", "mid", "up"], ["attn1"], ALL_PROJECTIONS),
}
NETWORK_DEFAULTS = NetworkConfig()


def as_settings(entries: list[str]) -> dict[str, list[str] | None]:
    """The network fields for a list of target entries: blocks × attention × projections when
    the entries are exactly such a product (so presets stay in the form older files use),
    else `targets` with the other three at their defaults (they are ignored then)."""
    if not entries:  # refused with its reason; the other fields keep their meaning
        return {"targets": []}
    parts = [TARGET_PATTERN.match(entry) for entry in entries]
    blocks = list(dict.fromkeys(part["kind"] + (f".{part['index']}" if part["index"] else "")
                                for part in parts))
    attention = list(dict.fromkeys(part["attn"] for part in parts))
    projections = [p for p in ALL_PROJECTIONS if any(part["proj"] == p for part in parts)]
    if len(set(entries)) == len(blocks) * len(attention) * len(projections):
        return {"targets": None, "blocks": blocks, "attention": attention,
                "projections": projections}
    return {"targets": list(entries), "blocks": NETWORK_DEFAULTS.blocks,
            "attention": NETWORK_DEFAULTS.attention, "projections": NETWORK_DEFAULTS.projections}


class TargetTree(QTreeWidget):
    """Block > attention kind > projection, one check box per leaf; a parent's box ticks or
    unticks everything under it and shows partly ticked when its leaves differ."""

    def __init__(self) -> None:
        super().__init__()
        self.setHeaderHidden(True)
        self.setMinimumHeight(240)
        self.leaves: dict[str, QTreeWidgetItem] = {}  # "up.attn2.to_k" -> leaf
        for kind, label in BLOCKS:
            block = self._item(self, label, f"All attention layers of the {label.lower()}.")
            for attn, attn_label, tip in ATTENTION:
                group = self._item(block, attn_label, tip)
                for proj, proj_label in PROJECTIONS:
                    key = f"{kind}.{attn}.{proj}"
                    leaf = self._item(group, proj_label, f"{key}: the {proj_label} projection.")
                    leaf.setData(0, Qt.UserRole, key)
                    self.leaves[key] = leaf
        self.expandToDepth(0)

    @staticmethod
    def _item(parent, label: str, tip: str) -> QTreeWidgetItem:
        item = QTreeWidgetItem(parent, [label])
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable | Qt.ItemIsAutoTristate)
        item.setCheckState(0, Qt.Checked)
        item.setToolTip(0, tip)
        return item

    def entries(self, current: list[str]) -> list[str]:
        """The ticked leaves as target entries; a partly ticked leaf (a file picked single
        blocks such as 'down.1.attn1.to_q') keeps the entries of `current` it stands for."""
        out = []
        for key, leaf in self.leaves.items():
            state = leaf.checkState(0)
            if state == Qt.Checked:
                out.append(key)
            elif state == Qt.PartiallyChecked:
                out += [entry for entry in current if _leaf_key(entry) == key and entry != key]
        return out

    def show_entries(self, entries: list[str]) -> None:
        for key, leaf in self.leaves.items():
            some = any(_leaf_key(entry) == key for entry in entries)
            leaf.setCheckState(0, Qt.Checked if key in entries else
                               Qt.PartiallyChecked if some else Qt.Unchecked)


def _leaf_key(entry: str) -> str:
    """'down.1.attn1.to_q' -> 'down.attn1.to_q' (the tree's leaf for it)."""
    part = TARGET_PATTERN.match(entry)
    return f"{part['kind']}.{part['attn']}.{part['proj']}"


class NetworkSection(Page):
    def __init__(self, binder: Binder) -> None:
        super().__init__("Network", "How big the LoRA is and which layers of the model it "
                                    "changes.")
        self.binder = binder
        self.info = ModelInfo()
        self.row("Rank", binder.field(
            spin(1, 4096), "network", "rank",
            "Size of the LoRA. 8-32 suits most styles and characters; higher learns more "
            "detail but makes a bigger file and can overfit."))
        self.row("Alpha", binder.field(
            dspin(0.0, 4096.0, 1.0, 2), "network", "alpha",
            "Scales the LoRA's effect: the effective strength is alpha / rank. Half the rank is "
            "a common choice."))
        self.scale = plain_label()
        self.row("Effective scale", self.scale)
        self.row("Dropout", binder.field(
            dspin(0.0, 1.0, 0.05, 2), "network", "dropout",
            "Randomly switches off part of the LoRA while training to fight overfitting "
            "(0 = off, 0.1 is mild)."))
        presets = QWidget()
        row = QHBoxLayout(presets)
        row.setContentsMargins(0, 0, 0, 0)
        for name in TARGET_PRESETS:
            button = QPushButton(name)
            button.setObjectName(f"targets:{name}")
            button.setToolTip(f"Tick the layers for '{name}'.")
            button.clicked.connect(lambda _=False, n=name: self.apply_target_preset(n))
            row.addWidget(button)
        row.addStretch()
        self.row("Layer presets", presets)
        self.tree = TargetTree()
        self.tree.setToolTip("The layers that get a LoRA: tick or untick any projection of any "
                             "block; a block's or attention kind's box sets all of its layers.")
        self.tree.itemChanged.connect(self._tree_edited)
        self.row("Target layers", self.tree)
        self.tree_error = plain_label()
        set_tone(self.tree_error, ERROR)
        self.row("", self.tree_error)
        self.count = plain_label()
        self.row("Trainable", self.count)
        self.module_list = QPlainTextEdit()
        self.module_list.setReadOnly(True)
        self.module_list.setMinimumHeight(160)
        modules = Folding("Module list")
        modules.row("", self.module_list)
        self.body.addWidget(modules)
        self.modules: list = []
        self.row("Text encoder", binder.field(
            QCheckBox("also train a LoRA on the text encoder"), "network", "train_text_encoder",
            "Also adapts how prompts are read. Helps characters; needs more memory."))
        edit, access = number_edit(float, "same as the U-Net rate")
        self.row("Text encoder learning rate", binder.field(
            edit, "network", "text_encoder_lr",
            "Learning rate of the text-encoder LoRA; usually lower than the U-Net's.", **access))
        more = Folding("Advanced")
        start_from = QLineEdit()
        start_from.setPlaceholderText("none: start from zero")
        more.row("Continue from LoRA", binder.field(
            start_from, "network", "init_from",
            "An existing LoRA file (.safetensors) to keep training instead of starting fresh.",
            get=lambda: start_from.text().strip() or None,
            put=lambda v: start_from.setText("" if v is None else str(v))))
        self.body.addWidget(more)
        self._syncing = False
        binder.changed.connect(self._config_changed)
        binder.errors_changed.connect(self._show_tree_error)
        self._config_changed("*")

    def set_model_info(self, info: ModelInfo) -> None:
        self.info = info
        self._update_count()

    def apply_target_preset(self, name: str) -> None:
        blocks, attention, projections = TARGET_PRESETS[name]
        self._write({"targets": None, "blocks": blocks, "attention": attention,
                     "projections": projections})
        self._show_tree()

    def _tree_edited(self, item: QTreeWidgetItem, column: int) -> None:
        # A parent's box changes each leaf under it, one signal per leaf; parents are skipped.
        if self._syncing or item.childCount():
            return
        current = self.binder.config.network.target_layers
        self._write(as_settings(self.tree.entries(current)))

    def _write(self, settings: dict) -> None:
        for name, value in settings.items():
            self.binder.set_value("network", name, list(value) if value is not None else None)

    def _show_tree(self) -> None:
        self._syncing = True
        try:
            self.tree.show_entries(self.binder.config.network.target_layers)
        finally:
            self._syncing = False

    def _show_tree_error(self) -> None:
        errors = [f"{name}: {self.binder.errors[f'network.{name}']}"
                  for name in ("targets", "blocks", "attention", "projections")
                  if f"network.{name}" in self.binder.errors]
        self.tree_error.setText("\n".join(errors))
        self.tree_error.setVisible(bool(errors))

    def _config_changed(self, key: str) -> None:
        if key == "*":
            self._show_tree()
        if key == "*" or key.startswith("network."):
            network = self.binder.config.network
            self.scale.setText(f"{network.alpha:g} / {network.rank} = "
                               f"{network.alpha / network.rank:.3g}")
            self._update_count()
        self._show_tree_error()

    def _update_count(self) -> None:
        network = self.binder.config.network
        if not self.info.unet_config:
            self.modules = []
            self.module_list.setPlainText("")
            self.count.setText("Pick an SD 1.x diffusers folder or .safetensors file to see how "
                               "many layers and parameters this trains.")
            return
        modules = selected_modules(self.info.unet_config, network)
        params = lora_parameter_count(modules, network.rank)
        self.modules = modules
        self.module_list.setPlainText("\n".join(
            f"{name}  ({fan_in} -> {fan_out}, {network.rank * (fan_in + fan_out):,} parameters)"
            for name, fan_in, fan_out in modules))
        self.count.setText(f"{len(modules)} U-Net modules, {params:,} trainable parameters "
                           f"(about {params * 2 / 1e6:.1f} MB at fp16)")
