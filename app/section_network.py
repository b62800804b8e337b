"""The Network section: rank, alpha, dropout, which attention layers get a LoRA, and the count
(the U-Net's layers, and the text encoders' when their LoRA is trained)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QHBoxLayout, QLineEdit, QPlainTextEdit, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QWidget)

from app.binding import Binder, dspin, number_edit, spin
from app.colours import ERROR, set_tone
from app.forms import Folding, Page, plain_label
from app.model_info import (AttentionBlock, ModelDescription, lora_parameter_count,
                            known_layout, selected_modules, text_encoder_modules, tree_blocks)
from trainer.config import TARGET_PATTERN, NetworkConfig
from trainer.families import get_family
from trainer.families.lora_names import unet_kohya_names

ROLES = {"down": "Down blocks shape the coarse layout and composition.",
         "mid": "The middle block holds the most abstract, lowest-resolution features.",
         "up": "Up blocks paint the details and the style."}
ATTENTION = [("attn1", "Self-attention (attn1)", "How the image relates to itself."),
             ("attn2", "Cross-attention (attn2)", "How the words of the prompt steer the image.")]
PROJECTIONS = [("to_q", "q (query)"), ("to_k", "k (key)"), ("to_v", "v (value)"),
               ("to_out.0", "out (output)")]
ALL_PROJECTIONS = [value for value, _ in PROJECTIONS]
PROJECTIONS_PER_TRANSFORMER = len(ATTENTION) * len(PROJECTIONS)
TARGET_PRESETS = {
    "attention (all)": (["down", "mid", "up"], ["attn1", "attn2"], ALL_PROJECTIONS),
    "cross-attention only": (["down", "mid", "up"], ["attn2"], ALL_PROJECTIONS),
    "self-attention only": (["down", "mid", "up"], ["attn1"], ALL_PROJECTIONS),
}
NETWORK_DEFAULTS = NetworkConfig()
BYTES_PER_PARAMETER = {"fp16": 2, "bf16": 2, "fp32": 4}


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


def size_text(size: int) -> str:
    """A file size in the unit that reads best: '900 bytes', '340 KB', '9.6 MB', '1.2 GB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if round(size / scale, 1) >= 1:  # 999,990 bytes reads "1.0 MB", not "1000 KB"
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1e3:.0f} KB" if round(size / 1e3) >= 1 else f"{size} bytes"


def block_label(block: AttentionBlock) -> str:
    """'Down block 1 (input blocks 4, 5) · 4 transformer blocks'."""
    transformers = block.modules // PROJECTIONS_PER_TRANSFORMER
    return f"{block.label} · {transformers} transformer block{'s' * (transformers != 1)}"


def block_tooltip(block: AttentionBlock) -> str:
    """The block's role, its transformer stacks and depth, and what its box sets."""
    kind = block.key.partition(".")[0]
    depth = max(1, block.transformer_depth)
    stacks = block.modules // PROJECTIONS_PER_TRANSFORMER // depth
    shape = (f"{stacks} × {depth} transformer blocks ({stacks} stacks, {depth} deep)"
             if stacks > 1 else f"{depth} transformer block{'s' * (depth != 1)}")
    return (f"{ROLES[kind]} {block.label}: {shape}, {block.modules} projections in all. "
            f"Its box ticks or unticks all of them ('{block.key}' in the settings).")


class TargetTree(QTreeWidget):
    """Block > attention kind > projection, one check box per leaf; a parent's box ticks or
    unticks everything under it and shows partly ticked when its leaves differ.

    The blocks are the picked model's own (`set_blocks`; SDXL: down 1-2, middle, up 0-1 with
    their SGM input / output block numbers); a leaf's key is the target entry it stands for,
    "down.1.attn1.to_q" ("mid.attn1.to_q" for the middle block)."""

    def __init__(self) -> None:
        super().__init__()
        self.setHeaderHidden(True)
        self.setMinimumHeight(240)
        self.leaves: dict[str, QTreeWidgetItem] = {}  # "up.1.attn2.to_k" -> leaf
        self.block_items: dict[str, QTreeWidgetItem] = {}  # "up.1" -> its box
        self.family = ""

    def set_blocks(self, family: str, blocks: list[AttentionBlock]) -> None:
        """Show these blocks (every box ticked until `show_network` says otherwise)."""
        self.family = family
        blocked = self.blockSignals(True)  # building is no edit: itemChanged stays quiet
        try:
            self._build(blocks)
        finally:
            self.blockSignals(blocked)
        self.expandToDepth(0)

    def _build(self, blocks: list[AttentionBlock]) -> None:
        self.clear()
        self.leaves.clear()
        self.block_items.clear()
        for block in blocks:
            item = self._item(self, block_label(block), block_tooltip(block))
            self.block_items[block.key] = item
            for attn, attn_label, tip in ATTENTION:
                group = self._item(item, attn_label, tip)
                for proj, proj_label in PROJECTIONS:
                    key = f"{block.key}.{attn}.{proj}"
                    leaf = self._item(group, proj_label, f"{key}: the {proj_label} projection.")
                    leaf.setData(0, Qt.UserRole, key)
                    self.leaves[key] = leaf

    @staticmethod
    def _item(parent, label: str, tip: str) -> QTreeWidgetItem:
        item = QTreeWidgetItem(parent, [label])
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable | Qt.ItemIsAutoTristate)
        item.setCheckState(0, Qt.Checked)
        item.setToolTip(0, tip)
        return item

    def entries(self) -> list[str]:
        """The ticked leaves as target entries. A leaf ticked in every block of its kind is
        written for the kind ('up.attn2.to_k' rather than 'up.1...' and 'up.2...'), so that
        everything ticked is the plain default and presets keep the form older files use."""
        ticked = [key for key, leaf in self.leaves.items() if leaf.checkState(0) == Qt.Checked]
        kinds: dict[str, list[str]] = {}
        for block in self.block_items:
            kinds.setdefault(block.partition(".")[0], []).append(block)
        out: list[str] = []
        for key in ticked:
            block, leaf = _split(key)
            kind = block.partition(".")[0]
            if all(f"{other}.{leaf}" in ticked for other in kinds[kind]):
                key = f"{kind}.{leaf}"
            if key not in out:
                out.append(key)
        return out

    def show_network(self, network: NetworkConfig) -> None:
        """Tick exactly the leaves the settings select (`NetworkConfig.selects`, as the
        trainer asks)."""
        for key, leaf in self.leaves.items():
            block, leaf_name = _split(key)
            kind, _, index = block.partition(".")
            attn, proj = leaf_name.split(".", 1)
            chosen = network.selects(kind, index or "0", attn, proj)
            leaf.setCheckState(0, Qt.Checked if chosen else Qt.Unchecked)

    def unknown_entries(self, network: NetworkConfig) -> list[str]:
        """Entries of the settings that name no block shown (a block this model lacks)."""
        kinds = {block.partition(".")[0] for block in self.block_items}
        out = []
        for entry in network.target_layers:
            part = TARGET_PATTERN.match(entry)
            block = part["kind"] + (f".{part['index']}" if part["index"] else "")
            if block == "mid.0":
                block = "mid"
            if block not in self.block_items and block not in kinds:
                out.append(entry)
        return out


def _split(key: str) -> tuple[str, str]:
    """'down.1.attn1.to_q' -> ('down.1', 'attn1.to_q'); 'mid.attn2.to_out.0' -> ('mid', ...)."""
    part = TARGET_PATTERN.match(key)
    block = part["kind"] + (f".{part['index']}" if part["index"] else "")
    return block, f"{part['attn']}.{part['proj']}"


class NetworkSection(Page):
    def __init__(self, binder: Binder) -> None:
        super().__init__("Network", "How big the LoRA is and which layers of the model it "
                                    "changes.")
        self.binder = binder
        self.info = ModelDescription()
        self.known = False  # whether the tree shows the picked model's own blocks
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
        self.tree.set_blocks(*tree_blocks(self.info))
        self.tree.setToolTip("The layers that get a LoRA: tick or untick any projection of any "
                             "block; a block's or attention kind's box sets all of its layers.")
        self.tree.itemChanged.connect(self._tree_edited)
        self.row("Target layers", self.tree)
        self.layout_note = plain_label()
        self.layout_note.setObjectName("network:layout")
        self.row("", self.layout_note)
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
        self.text_modules: list[tuple[str, int, int]] = []  # the picked model's, when trained
        self.row("Text encoder", binder.field(
            QCheckBox("also train a LoRA on the text encoder"), "network", "train_text_encoder",
            "Also adapts how prompts are read. Helps characters; needs more memory."))
        edit, access = number_edit(float, "same as the U-Net rate")
        self.row("Text encoder learning rate", binder.field(
            edit, "network", "text_encoder_lr",
            "Learning rate of the text-encoder LoRA: usually lower than the U-Net's (5e-5 is "
            "typical). Empty: the same as the U-Net.", **access))
        edit_2, access_2 = number_edit(float, "same as the first text encoder")
        self.te2_rate_edit = edit_2
        self.te2_rate = binder.field(
            edit_2, "network", "text_encoder_2_lr",
            "SDXL's second text encoder (OpenCLIP-bigG) with a rate of its own.", **access_2)
        self.row("Text encoder 2 learning rate", self.te2_rate)
        self.form.setRowVisible(self.te2_rate, False)  # only SDXL has a second text encoder
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

    def set_model_info(self, info: ModelDescription) -> None:
        """A model was picked (or cleared): show its blocks in the tree, recount."""
        self.info = info
        self.known = known_layout(info)
        self.text_modules = (text_encoder_modules(info.family, self.binder.config.model.path)
                             if info.family else [])
        two_encoders = bool(info.family) and len(get_family(info.family).text_encoders) > 1
        self.form.setRowVisible(self.te2_rate, two_encoders)
        family, blocks = tree_blocks(info)
        shown = [(key, item.text(0)) for key, item in self.tree.block_items.items()]
        if family != self.tree.family or shown != [(b.key, block_label(b)) for b in blocks]:
            self.tree.set_blocks(family, blocks)
            self._show_tree()
        self._update_count()
        self._show_tree_error()

    def problems(self) -> list[str]:
        """Why these settings cannot train the picked model (empty when they can, or while no
        model with a known layout is picked)."""
        if not self.known:
            return []
        network = self.binder.config.network
        unknown = self.tree.unknown_entries(network) if network.targets is not None else []
        if unknown:  # the trainer refuses a target naming no layer
            text = (f"network.targets: {', '.join(unknown)} name no layer of this "
                    f"{self.info.label} model (Network section)")
            return [text]
        if not selected_modules(self.info.unet_config, network):
            text = (f"the target layers pick no layer of this {self.info.label} model "
                    "(Network section)")
            return [text]
        return []

    def apply_target_preset(self, name: str) -> None:
        blocks, attention, projections = TARGET_PRESETS[name]
        self._write({"targets": None, "blocks": blocks, "attention": attention,
                     "projections": projections})
        self._show_tree()

    def _tree_edited(self, item: QTreeWidgetItem, column: int) -> None:
        # A parent's box changes each leaf under it, one signal per leaf; parents are skipped.
        if self._syncing or item.childCount():
            return
        self._write(as_settings(self.tree.entries()))

    def _write(self, settings: dict) -> None:
        for name, value in settings.items():
            self.binder.set_value("network", name, list(value) if value is not None else None)

    def _show_tree(self) -> None:
        self._syncing = True
        try:
            self.tree.show_network(self.binder.config.network)
        finally:
            self._syncing = False

    def _show_tree_error(self) -> None:
        errors = [f"{name}: {self.binder.errors[f'network.{name}']}"
                  for name in ("targets", "blocks", "attention", "projections")
                  if f"network.{name}" in self.binder.errors]
        network = self.binder.config.network
        unknown = self.tree.unknown_entries(network) if self.known else []
        if unknown and network.targets is not None:
            errors.append(f"Not in this {self.info.label} model, so not shown above: "
                          f"{', '.join(unknown)} (training refuses them; tick or untick any "
                          "box to drop them)")
        elif unknown:  # blocks x attention x projections: name the blocks
            blocks = dict.fromkeys(_split(entry)[0] for entry in unknown)
            errors.append(f"Not in this {self.info.label} model, so not shown above: "
                          f"{', '.join(blocks)} (ignored)")
        self.tree_error.setText("\n".join(errors))
        self.form.setRowVisible(self.tree_error, bool(errors))

    def _config_changed(self, key: str) -> None:
        if key == "*":
            self._show_tree()
        if key == "*" or key.startswith("network."):
            network = self.binder.config.network
            self.scale.setText(f"{network.alpha:g} / {network.rank} = "
                               f"{network.alpha / network.rank:.3g}")
        if key in ("*", "output.save_precision") or key.startswith("network."):
            self._update_count()
        self._show_tree_error()

    def _update_count(self) -> None:
        network = self.binder.config.network
        if not self.info.unet_config:
            self.modules = []
            self.module_list.setPlainText("")
            self.count.setText("Pick a base model (a diffusers folder or a .safetensors file) "
                               "to see how many layers and parameters this trains.")
            self._show_layout_note()
            return
        modules = selected_modules(self.info.unet_config, network)
        text_modules = self.text_modules if network.train_text_encoder else []
        params = lora_parameter_count(modules + text_modules, network.rank)
        self.modules = modules
        # the names the file will hold (SDXL: kohya's SGM paths), as the trainer writes them
        names = unet_kohya_names(get_family(self.info.family or "sd1"), self.info.unet_config,
                                 [name for name, _, _ in modules])
        named = [(names[name], fan_in, fan_out) for name, fan_in, fan_out in modules]
        self.module_list.setPlainText("\n".join(
            f"{name}  ({fan_in} -> {fan_out}, {network.rank * (fan_in + fan_out):,} "
            "parameters)" for name, fan_in, fan_out in named + text_modules))
        text = f" + {len(text_modules)} text-encoder modules" if text_modules else ""
        precision = self.binder.config.output.save_precision
        size = size_text(params * BYTES_PER_PARAMETER[precision])
        self.count.setText(f"{len(modules)} U-Net modules{text}, {params:,} trainable "
                           f"parameters (about {size} at {precision})")
        self._show_layout_note()

    def _show_layout_note(self) -> None:
        if self.known:
            text = f"The blocks of this {self.info.label} model."
        else:
            text = (f"The {get_family(self.tree.family).label} layout, until a base model is "
                    "picked: then its own blocks show.")
        self.layout_note.setText(text)
