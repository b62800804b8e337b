"""The Network section: rank, alpha, dropout, which layer groups and layers get a LoRA (the
attention projections, kohya's transformer set, LoCon's convolutions), and the count (the
U-Net's layers, and the text encoders' when their LoRA is trained)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QHBoxLayout, QLineEdit, QPlainTextEdit, QPushButton,
                               QTreeWidgetItem, QWidget)

from app.binding import Binder, combo, dspin, number_edit, spin
from app.colours import ERROR, set_tone
from app.forms import Folding, Page, plain_label
from app.model_info import (ModelDescription, known_layout, layer_parameter_count,
                            network_parameter_count, selected_modules, text_encoder_modules,
                            tree_blocks)
from app.target_tree import (ALL_PROJECTIONS, NETWORK_DEFAULTS, TargetTree, as_settings,
                             model_has, modules_key, shown_groups, split_entry, with_groups)
from trainer.families import get_family
from trainer.network_kinds import KINDS, get_kind
from trainer.families.lora_names import unet_kohya_names

# network.modules as the window offers it: one choice of what gets adapted
MODULE_CHOICES = [
    ("Attention layers (default)", "attention"),
    ("Attention + feed-forward (kohya's default set)", "transformer"),
    ("Attention + convolutions (LoCon)", "attention+conv"),
    ("kohya's set + convolutions (LoCon)", "transformer+conv"),
    ("Convolutions only", "conv"),
]
MODULES_TIP = (
    "Which kinds of layer get a LoRA. Attention: the default, small files, learns styles and "
    "characters well. kohya's set adds the feed-forward layers and proj_in/out: about twice "
    "the file, a little more detail (what kohya_ss trains by default). Convolutions (LoCon) "
    "add the ResNet layers with their own conv rank: textures, brush strokes and fine detail, "
    "files two to three times bigger.")
TARGET_PRESETS = {
    "attention (all)": (["down", "mid", "up"], ["attn1", "attn2"], ALL_PROJECTIONS),
    "cross-attention only": (["down", "mid", "up"], ["attn2"], ALL_PROJECTIONS),
    "self-attention only": (["down", "mid", "up"], ["attn1"], ALL_PROJECTIONS),
}
BYTES_PER_PARAMETER = {"fp16": 2, "bf16": 2, "fp32": 4}


def size_text(size: int) -> str:
    """A file size in the unit that reads best: '900 bytes', '340 KB', '9.6 MB', '1.2 GB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if round(size / scale, 1) >= 1:  # 999,990 bytes reads "1.0 MB", not "1000 KB"
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1e3:.0f} KB" if round(size / 1e3) >= 1 else f"{size} bytes"


class NetworkSection(Page):
    def __init__(self, binder: Binder) -> None:
        super().__init__("Network", "How big the LoRA is and which layers of the model it "
                                    "changes.")
        self.binder = binder
        self.info = ModelDescription()
        self.known = False  # whether the tree shows the picked model's own blocks
        kinds = combo([(kind.label, kind.name) for kind in KINDS.values()])
        for index, kind in enumerate(KINDS.values()):
            kinds.setItemData(index, kind.summary, Qt.ToolTipRole)
        self.row("Kind", binder.field(
            kinds, "network", "kind", "What the network is made of; each kind's own line "
            "below says what it is good for and where it loads."))
        self.kind_note = plain_label()
        self.kind_note.setObjectName("network:kind-note")
        self.row("", self.kind_note)
        # another kind's options would be refused: switching kind sets them back
        binder.companions["network.kind"] = self._options_for
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
        self.dropout = binder.field(
            dspin(0.0, 0.99, 0.05, 2), "network", "dropout",
            "Randomly switches off part of the LoRA while training to fight overfitting "
            "(0 = off, 0.1 is mild).")
        self.row("Dropout", self.dropout)
        factor = spin(0, 1024)  # 0 shows "auto", which the settings call -1 (0 is no factor)
        factor.setSpecialValueText("auto (near the square root)")
        self.kind_rows = {
            "lokr_factor": self.row_for("LoKr factor", binder.field(
                factor, "network", "lokr_factor",
                "The size of one Kronecker factor of each layer (LyCORIS' factor): larger "
                "learns more and makes a bigger file; 4-16 is usual. auto: near the square "
                "root of each layer's width (the smallest file).",
                get=lambda: factor.value() or -1,
                put=lambda v: factor.setValue(0 if v == -1 else v))),
            "decompose_both": self.row_for("", binder.field(
                QCheckBox("decompose both factors"), "network", "decompose_both",
                "LoKr: the first factor low-rank too (an even smaller file).")),
            "use_tucker": self.row_for("", binder.field(
                QCheckBox("Tucker convolutions (use_tucker)"), "network", "use_tucker",
                "LoHa / LoKr: each 3x3 convolution as a small core and two projections, "
                "LyCORIS' use_tucker: fewer parameters on the conv layers.")),
            "rank_dropout": self.row_for("Rank dropout", binder.field(
                dspin(0.0, 0.99, 0.05, 2), "network", "rank_dropout",
                "LoHa / LoKr: drops rows of the change while training, against overfitting "
                "(0 = off).")),
            "module_dropout": self.row_for("Module dropout", binder.field(
                dspin(0.0, 0.99, 0.05, 2), "network", "module_dropout",
                "LoHa / LoKr: skips a whole layer's change on some steps (0 = off).")),
        }
        groups = combo(MODULE_CHOICES)
        self.row("Layers", binder.field(
            groups, "network", "modules", MODULES_TIP,
            get=lambda: groups.currentData().split("+"),
            put=lambda v: groups.setCurrentIndex(max(0, groups.findData(modules_key(v))))))
        conv_rank, conv_rank_access = number_edit(int, "same as the rank")
        self.conv_rank = binder.field(
            conv_rank, "network", "conv_rank",
            "Rank of the 3x3 convolutions (kohya's conv_dim). Lower than the rank keeps the "
            "file small: 4-16 is usual. Empty: the same as the rank.", **conv_rank_access)
        self.row("Conv rank", self.conv_rank)
        conv_alpha, conv_alpha_access = number_edit(float, "same scale as the other layers")
        self.conv_alpha = binder.field(
            conv_alpha, "network", "conv_alpha",
            "Alpha of the 3x3 convolutions (kohya's conv_alpha): their strength is conv alpha "
            "/ conv rank. Empty: the same scale as the other layers.", **conv_alpha_access)
        self.row("Conv alpha", self.conv_alpha)
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
        self.text_modules: list = []  # the picked model's LayerShapes, when trained
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
        if family != self.tree.family or blocks != self.tree.blocks:
            self.tree.set_blocks(family, blocks, shown_groups(self.binder.config.network))
            self._show_tree()
        self._update_count()
        self._show_tree_error()

    def row_for(self, label: str, widget: QWidget) -> QWidget:
        self.row(label, widget)
        return widget

    @staticmethod
    def _options_for(kind: str) -> dict:
        """The other kinds' options at their defaults (they would be refused), and LoRA's
        input dropout off for LoHa / LoKr (they have their own)."""
        keep = get_kind(kind).options
        defaults = {name: getattr(NETWORK_DEFAULTS, name) for name in
                    ("lokr_factor", "decompose_both", "rank_dropout", "module_dropout",
                     "use_tucker")
                    if name not in keep}
        return {**defaults, **({"dropout": 0.0} if kind in ("loha", "lokr") else {})}

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
        self._write(as_settings(self.tree.entries(), self.binder.config.network.modules,
                                self.tree.has))

    def _groups_changed(self, edited: bool) -> None:
        """The tree shows the groups picked (and any group a layer picked one by one belongs
        to); when the user changed network.modules (`edited`), layers picked one by one keep
        their picks while the group added or dropped is added or dropped. Settings loaded from
        a file are shown as they are."""
        network = self.binder.config.network
        if edited and network.targets is not None:
            blocks = self.tree.blocks
            kinds = list(dict.fromkeys(block.key.partition(".")[0] for block in blocks))
            self._write({"targets": with_groups(network.targets, network.modules, kinds,
                                                lambda entry: model_has(blocks, entry))})
        groups = shown_groups(self.binder.config.network)
        rebuilt = not self.tree.shown_for(groups)
        if rebuilt:
            self.tree.set_blocks(self.tree.family, self.tree.blocks, groups)
        if rebuilt or edited:
            self._show_tree()

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
            blocks = dict.fromkeys(split_entry(entry)[0] for entry in unknown)
            errors.append(f"Not in this {self.info.label} model, so not shown above: "
                          f"{', '.join(blocks)} (ignored)")
        self.tree_error.setText("\n".join(errors))
        self.form.setRowVisible(self.tree_error, bool(errors))

    def _config_changed(self, key: str) -> None:
        if key in ("*", "network.modules"):
            self._groups_changed(edited=key == "network.modules")
        if key == "*":
            self._show_tree()
        network = self.binder.config.network
        conv = "conv" in network.modules
        self.form.setRowVisible(self.conv_rank, conv)
        self.form.setRowVisible(self.conv_alpha, conv)
        kind = get_kind(network.kind)
        self.kind_note.setText(kind.summary)
        self.form.setRowVisible(self.dropout, kind.name in ("lora", "dora"))
        for option, row in self.kind_rows.items():
            self.form.setRowVisible(row, option in kind.options)
        if key == "*" or key.startswith("network."):
            network = self.binder.config.network
            self.scale.setText(f"{network.alpha:g} / {network.rank} = "
                               f"{network.alpha / network.rank:.3g}" + (
                                   " (LoKr: 1 on layers whose two factors are full matrices, "
                                   "as LyCORIS trains them)" if network.kind == "lokr" else ""))
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
        params = network_parameter_count(modules + text_modules, network)
        self.modules = modules
        # the names the file will hold (SDXL: kohya's SGM paths), as the trainer writes them
        names = unet_kohya_names(get_family(self.info.family or "sd1"), self.info.unet_config,
                                 [layer.name for layer in modules])
        named = [layer._replace(name=names[layer.name]) for layer in modules]
        self.module_list.setPlainText("\n".join(
            f"{layer.name}  ({layer.fan_in} -> {layer.fan_out}"
            + (f", {layer.kernel[0]}x{layer.kernel[1]}" if layer.kernel != (1, 1) else "")
            + f", rank {network.rank_for(layer.kernel)}, "
            f"{layer_parameter_count(layer, network):,} parameters)"
            for layer in named + text_modules))
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
