"""The layer tree of the Network section: block > attention kind > projection, and for the
groups picked the transformer extras and the convolutions, one check box per layer; and the
arithmetic between its ticks and the network settings (`as_settings`, `with_groups`)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTreeWidget, QTreeWidgetItem

from app.model_info import UNetBlock
from trainer.config import NetworkConfig
from trainer.network_groups import (ATTENTION_LEAVES, CONV_LEAVES, TARGET_PATTERN,
                                    TRANSFORMER_EXTRA_LEAVES, group_leaves, group_of)

ROLES = {"down": "Down blocks shape the coarse layout and composition.",
         "mid": "The middle block holds the most abstract, lowest-resolution features.",
         "up": "Up blocks paint the details and the style."}
ATTENTION = [("attn1", "Self-attention (attn1)", "How the image relates to itself."),
             ("attn2", "Cross-attention (attn2)", "How the words of the prompt steer the image.")]
PROJECTIONS = [("to_q", "q (query)"), ("to_k", "k (key)"), ("to_v", "v (value)"),
               ("to_out.0", "out (output)")]
ALL_PROJECTIONS = [value for value, _ in PROJECTIONS]
PROJECTIONS_PER_TRANSFORMER = len(ATTENTION) * len(PROJECTIONS)
GROUP_LEAVES = [  # (group, label, tip, [(leaf, label)]) as the tree shows them under a block
    ("transformer", "Transformer extras", "The transformer's way in and out and its feed-forward "
     "layers (kohya's default set adds these).",
     [("proj_in", "proj_in (into the transformer)"), ("proj_out", "proj_out (out of it)"),
      ("ff.net.0.proj", "feed-forward in"), ("ff.net.2", "feed-forward out")]),
    ("conv", "Convolutions (LoCon)", "The ResNet layers that paint textures and fine detail.",
     [("conv1", "ResNet conv 1 (3x3)"), ("conv2", "ResNet conv 2 (3x3)"),
      ("conv_shortcut", "ResNet shortcut (1x1)"), ("time_emb_proj", "time embedding"),
      ("downsampler", "downsampler (3x3)"), ("upsampler", "upsampler (3x3)")]),
]
NETWORK_DEFAULTS = NetworkConfig()


def modules_key(modules: list[str]) -> str:
    """network.modules as a MODULE_CHOICES key ('transformer+conv')."""
    base = ("transformer" if "transformer" in modules else
            "attention" if "attention" in modules else "")
    return "+".join(part for part in (base, "conv" if "conv" in modules else "") if part)


def as_settings(entries: list[str], modules: list[str],
                exists=lambda entry: True) -> dict[str, list[str] | None]:
    """The network fields for a list of target entries: blocks × the groups' layers (attention
    narrowed to attention × projections) when the entries are exactly such a product of the
    layers that exist (`exists`), so presets stay in the form older files use; else `targets`
    with the other fields at their defaults (they are ignored then)."""
    if not entries:  # refused with its reason; the other fields keep their meaning
        return {"targets": []}
    parts = [TARGET_PATTERN.match(entry) for entry in entries]
    blocks = list(dict.fromkeys(part["kind"] + (f".{part['index']}" if part["index"] else "")
                                for part in parts))
    attention_parts = [part["leaf"].split(".", 1) for part in parts
                       if part["leaf"] in ATTENTION_LEAVES]
    attention = list(dict.fromkeys(attn for attn, _ in attention_parts)) or ["attn1", "attn2"]
    projections = [p for p in ALL_PROJECTIONS if any(proj == p for _, proj in attention_parts)]
    projections = projections or list(ALL_PROJECTIONS)
    product = {f"{block}.{leaf}" for block in blocks
               for leaf in group_leaves(modules, attention, projections)}
    if set(entries) == {entry for entry in product if exists(entry)}:
        return {"targets": None, "blocks": blocks, "attention": attention,
                "projections": projections}
    return {"targets": list(entries), "blocks": NETWORK_DEFAULTS.blocks,
            "attention": NETWORK_DEFAULTS.attention, "projections": NETWORK_DEFAULTS.projections}


def shown_groups(network: NetworkConfig) -> list[str]:
    """The groups the tree shows: network.modules, and the groups of layers listed one by one
    in network.targets (which train whatever modules says), so a file's picks all show."""
    groups = list(network.modules)
    for entry in network.targets or []:
        group = group_of(TARGET_PATTERN.match(entry)["leaf"])
        if group == "attention" and "transformer" not in groups and "attention" not in groups:
            groups.append("attention")
        elif group != "attention" and group not in groups:
            groups.append(group)
    return groups


def model_has(blocks: list[UNetBlock], entry: str) -> bool:
    """Whether a target entry ('up.conv1', 'mid.downsampler', 'down.2.proj_in') names a layer
    of these blocks (whatever the tree shows now)."""
    block, leaf = split_entry(entry)
    return any(leaf in b.leaves and (b.key == block or b.key.partition(".")[0] == block)
               for b in blocks)


def with_groups(targets: list[str], modules: list[str], kinds: list[str],
                exists=lambda entry: True) -> list[str]:
    """`targets` after network.modules changed: entries of groups no longer picked dropped,
    a newly picked group's layers added for every block kind (`kinds`: down, mid, up) that has
    them (`exists`: the middle block has no samplers, SD 1.x's up blocks no downsampler)."""
    def picked(leaf: str) -> bool:
        group = group_of(leaf)
        return (group == "conv" and "conv" in modules) or (
            group == "transformer" and "transformer" in modules) or (
            group == "attention" and ("attention" in modules or "transformer" in modules))

    kept = [t for t in targets if picked(TARGET_PATTERN.match(t)["leaf"])]
    present = {group_of(TARGET_PATTERN.match(t)["leaf"]) for t in kept}
    added = [f"{kind}.{leaf}" for group, leaves in (
        ("attention", ATTENTION_LEAVES), ("transformer", TRANSFORMER_EXTRA_LEAVES),
        ("conv", CONV_LEAVES)) if group not in present for kind in kinds for leaf in leaves
        if picked(leaf) and exists(f"{kind}.{leaf}")]
    return kept + added


def block_label(block: UNetBlock) -> str:
    """'Down block 1 (input blocks 4, 5) · 4 transformer blocks'."""
    transformers = block.modules // PROJECTIONS_PER_TRANSFORMER
    if not transformers:
        return f"{block.label} · ResNets only"
    return f"{block.label} · {transformers} transformer block{'s' * (transformers != 1)}"


def block_tooltip(block: UNetBlock) -> str:
    """The block's role, its transformer stacks and depth, and what its box sets."""
    kind = block.key.partition(".")[0]
    if not block.modules:
        return (f"{ROLES[kind]} {block.label} has no attention, only ResNet layers: the "
                f"convolution group adapts them ('{block.key}' in the settings).")
    depth = max(1, block.transformer_depth)
    stacks = block.modules // PROJECTIONS_PER_TRANSFORMER // depth
    shape = (f"{stacks} × {depth} transformer blocks ({stacks} stacks, {depth} deep)"
             if stacks > 1 else f"{depth} transformer block{'s' * (depth != 1)}")
    return (f"{ROLES[kind]} {block.label}: {shape}, {block.modules} projections in all. "
            f"Its box ticks or unticks all of them ('{block.key}' in the settings).")


class TargetTree(QTreeWidget):
    """Block > attention kind > projection (and, for the groups picked, transformer extras and
    convolutions), one check box per leaf; a parent's box ticks or unticks everything under it
    and shows partly ticked when its leaves differ.

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
        self.modules: list[str] = ["attention"]
        self.blocks: list[UNetBlock] = []

    def set_blocks(self, family: str, blocks: list[UNetBlock],
                   modules: list[str] | None = None) -> None:
        """Show these blocks with the layers of the groups `modules` picks (every box ticked
        until `show_network` says otherwise)."""
        self.family, self.blocks = family, blocks
        self.modules = list(modules or self.modules)
        blocked = self.blockSignals(True)  # building is no edit: itemChanged stays quiet
        try:
            self._build(blocks)
        finally:
            self.blockSignals(blocked)
        self.expandToDepth(0)

    def shown_for(self, modules: list[str]) -> bool:
        return modules_key(modules) == modules_key(self.modules)

    def _build(self, blocks: list[UNetBlock]) -> None:
        self.clear()
        self.leaves.clear()
        self.block_items.clear()
        attention = "attention" in self.modules or "transformer" in self.modules
        for block in blocks:
            groups = [(group, label, tip, [(leaf, text) for leaf, text in leaves
                                            if leaf in block.leaves])
                      for group, label, tip, leaves in GROUP_LEAVES if group in self.modules]
            if not ((attention and block.modules) or any(leaves for *_, leaves in groups)):
                continue  # nothing of the groups picked lives in this block
            item = self._item(self, block_label(block), block_tooltip(block))
            self.block_items[block.key] = item
            for attn, attn_label, tip in ATTENTION if attention and block.modules else []:
                group = self._item(item, attn_label, tip)
                for proj, proj_label in PROJECTIONS:
                    self._leaf(group, f"{block.key}.{attn}.{proj}",
                               f"the {proj_label} projection", proj_label)
            for _, label, tip, leaves in groups:
                if leaves:
                    group = self._item(item, label, tip)
                    for leaf, text in leaves:
                        self._leaf(group, f"{block.key}.{leaf}", text, text)

    def _leaf(self, parent: QTreeWidgetItem, key: str, what: str, label: str) -> None:
        leaf = self._item(parent, label, f"{key}: {what}.")
        leaf.setData(0, Qt.UserRole, key)
        self.leaves[key] = leaf

    def has(self, entry: str) -> bool:
        """Whether a target entry ('up.conv1', 'mid.downsampler') names a layer shown."""
        block, leaf = split_entry(entry)
        if "." in block or block == "mid":  # one block
            return f"{block}.{leaf}" in self.leaves
        return any(f"{key}.{leaf}" in self.leaves for key in self.block_items
                   if key.partition(".")[0] == block)

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
            block, leaf = split_entry(key)
            kind = block.partition(".")[0]
            holding = [other for other in kinds[kind] if f"{other}.{leaf}" in self.leaves]
            if all(f"{other}.{leaf}" in ticked for other in holding):
                key = f"{kind}.{leaf}"
            if key not in out:
                out.append(key)
        return out

    def show_network(self, network: NetworkConfig) -> None:
        """Tick exactly the leaves the settings select (`NetworkConfig.selects`, as the
        trainer asks)."""
        for key, leaf in self.leaves.items():
            block, leaf_name = split_entry(key)
            kind, _, index = block.partition(".")
            chosen = network.selects(kind, index or "0", leaf_name)
            leaf.setCheckState(0, Qt.Checked if chosen else Qt.Unchecked)

    def unknown_entries(self, network: NetworkConfig) -> list[str]:
        """Entries of the settings that name no layer shown (a block this model lacks, or a
        layer its block lacks, like the middle block's downsampler)."""
        kinds = {block.partition(".")[0] for block in self.block_items}
        out = []
        for entry in network.target_layers:
            part = TARGET_PATTERN.match(entry)
            block = part["kind"] + (f".{part['index']}" if part["index"] else "")
            if block == "mid.0":
                block = "mid"
            if block not in self.block_items and block not in kinds:
                out.append(entry)
            elif network.targets is not None and not self.has(entry):
                out.append(entry)
        return out


def split_entry(key: str) -> tuple[str, str]:
    """'down.1.attn1.to_q' -> ('down.1', 'attn1.to_q'); 'mid.proj_in' -> ('mid', 'proj_in')."""
    part = TARGET_PATTERN.match(key)
    block = part["kind"] + (f".{part['index']}" if part["index"] else "")
    return block, part["leaf"]
