"""The Network section: rank, alpha, dropout, which attention layers get a LoRA, and the count."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QHBoxLayout, QLineEdit, QPlainTextEdit, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QWidget)

from app.binding import Binder, dspin, number_edit, spin
from app.forms import Folding, Page, plain_label
from app.model_info import ModelInfo, lora_parameter_count, selected_modules

BLOCKS = [("down", "Down blocks (coarse layout, composition)"),
          ("mid", "Middle block"),
          ("up", "Up blocks (details, style)")]
ATTENTION = [("attn1", "Self-attention (attn1): how the image relates to itself"),
             ("attn2", "Cross-attention (attn2): how words steer the image")]
PROJECTIONS = [("to_q", "q (query)"), ("to_k", "k (key)"), ("to_v", "v (value)"),
               ("to_out.0", "out (output)")]
GROUPS = {"blocks": ("Blocks", BLOCKS), "attention": ("Attention", ATTENTION),
          "projections": ("Projections", PROJECTIONS)}
TARGET_PRESETS = {
    "attention (all)": (["down", "mid", "up"], ["attn1", "attn2"],
                        ["to_q", "to_k", "to_v", "to_out.0"]),
    "cross-attention only": (["down", "mid", "up"], ["attn2"], ["to_q", "to_k", "to_v", "to_out.0"]),
    "self-attention only": (["down", "mid", "up"], ["attn1"], ["to_q", "to_k", "to_v", "to_out.0"]),
}


class TargetTree(QTreeWidget):
    """Three groups of check boxes: blocks × attention kind × projection (every combination of
    the ticked ones gets an adapter)."""

    def __init__(self) -> None:
        super().__init__()
        self.setHeaderHidden(True)
        self.setMinimumHeight(260)
        self.items: dict[str, dict[str, QTreeWidgetItem]] = {}
        for field, (title, entries) in GROUPS.items():
            top = QTreeWidgetItem([title])
            top.setFlags(top.flags() | Qt.ItemIsAutoTristate | Qt.ItemIsUserCheckable)
            self.addTopLevelItem(top)
            self.items[field] = {}
            for value, label in entries:
                child = QTreeWidgetItem([label])
                child.setFlags(child.flags() | Qt.ItemIsUserCheckable)
                child.setCheckState(0, Qt.Checked)
                child.setData(0, Qt.UserRole, value)
                top.addChild(child)
                self.items[field][value] = child
        self.expandAll()

    def values(self, field: str) -> list[str]:
        return [value for value, item in self.items[field].items()
                if item.checkState(0) == Qt.Checked]

    def show_values(self, field: str, values: list[str]) -> None:
        for value, item in self.items[field].items():
            whole = value in values or (field == "blocks" and any(
                v.startswith(value + ".") for v in values))
            item.setCheckState(0, Qt.Checked if whole else Qt.Unchecked)


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
        self.tree.setToolTip("The layers that get a LoRA. Every ticked block × attention kind × "
                             "projection is trained.")
        self.tree.itemChanged.connect(self._tree_edited)
        self.row("Target layers", self.tree)
        self.tree_error = plain_label()
        self.tree_error.setStyleSheet("color: #d03030;")
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
        for field, values in (("blocks", blocks), ("attention", attention),
                              ("projections", projections)):
            self.binder.set_value("network", field, list(values))
        self._show_tree()

    def _tree_edited(self, item: QTreeWidgetItem, column: int) -> None:
        if self._syncing or item.parent() is None:
            return
        field = next(f for f, items in self.tree.items.items() if item in items.values())
        values = self.tree.values(field)
        if field == "blocks":  # keep single blocks ("down.1") the user set in a file
            kept = [b for b in self.binder.config.network.blocks
                    if "." in b and b.split(".")[0] in values]
            values = [v for v in values if not any(k.startswith(v + ".") for k in kept)] + kept
        self.binder.set_value("network", field, values)

    def _show_tree(self) -> None:
        self._syncing = True
        try:
            network = self.binder.config.network
            for field in GROUPS:
                self.tree.show_values(field, getattr(network, field))
        finally:
            self._syncing = False

    def _show_tree_error(self) -> None:
        errors = [f"{field}: {self.binder.errors[f'network.{field}']}" for field in GROUPS
                  if f"network.{field}" in self.binder.errors]
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
        modules = selected_modules(self.info.unet_config, network.blocks, network.attention,
                                   network.projections)
        params = lora_parameter_count(modules, network.rank)
        self.modules = modules
        self.module_list.setPlainText("\n".join(
            f"{name}  ({fan_in} -> {fan_out}, {network.rank * (fan_in + fan_out):,} parameters)"
            for name, fan_in, fan_out in modules))
        self.count.setText(f"{len(modules)} U-Net modules, {params:,} trainable parameters "
                           f"(about {params * 2 / 1e6:.1f} MB at fp16)")
