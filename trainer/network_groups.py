"""Which U-Net layers a network adapts: the module groups, their leaves, and a layer's leaf.

Torch-free: the config validates with it, the trainer picks modules with it and the window
counts with it, so what is shown is what is trained (docs/lora-format.md, "Which modules").

A *leaf* is a layer's place inside its block, the same in every block of a kind:
- group `attention` (the default, today's tree): the attention projections
  `attn1.to_q` ... `attn2.to_out.0`;
- group `transformer`, kohya's default set (networks.lora): attention plus the transformer's
  `proj_in` / `proj_out` and its feed-forward `ff.net.0.proj` / `ff.net.2`;
- group `conv`, what kohya's conv_dim adds (LoCon): the ResNet blocks' `conv1`, `conv2`,
  `conv_shortcut` and `time_emb_proj`, and the blocks' `downsampler` / `upsampler` conv.
A target entry is `block.leaf` (`up.attn2.to_k`, `down.1.conv1`, `mid.proj_in`).
"""

from __future__ import annotations

import re

ATTENTION_KINDS = ("attn1", "attn2")
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
ATTENTION_LEAVES = tuple(f"{attn}.{proj}" for attn in ATTENTION_KINDS for proj in PROJECTIONS)
TRANSFORMER_EXTRA_LEAVES = ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
CONV_LEAVES = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsampler", "upsampler")
LEAVES = ATTENTION_LEAVES + TRANSFORMER_EXTRA_LEAVES + CONV_LEAVES
MODULE_GROUPS = ("attention", "transformer", "conv")

_BLOCK = r"(?P<block>down_blocks\.(?P<down>\d+)|mid_block|up_blocks\.(?P<up>\d+))"
_LAYER = re.compile(
    rf"^{_BLOCK}\.(?:"
    r"attentions\.\d+\.transformer_blocks\.\d+\.(?P<t>attn[12]\.(?:to_q|to_k|to_v|to_out\.0)"
    r"|ff\.net\.0\.proj|ff\.net\.2)"
    r"|attentions\.\d+\.(?P<p>proj_in|proj_out)"
    r"|resnets\.\d+\.(?P<r>conv1|conv2|conv_shortcut|time_emb_proj)"
    r"|(?P<s>downsamplers|upsamplers)\.0\.conv)$")
TARGET_PATTERN = re.compile(
    r"^(?P<kind>down|mid|up)(\.(?P<index>\d+))?\.(?P<leaf>"
    + "|".join(re.escape(leaf) for leaf in LEAVES) + r")$")


def leaf_of(module_path: str) -> tuple[str, str, str] | None:
    """(block kind, block index, leaf) of a diffusers U-Net module path, or None for a layer
    no group adapts: 'up_blocks.1.resnets.2.conv1' -> ('up', '1', 'conv1')."""
    match = _LAYER.match(module_path)
    if match is None:
        return None
    kind, index = (("down", match["down"]) if match["down"] is not None else
                   ("up", match["up"]) if match["up"] is not None else ("mid", "0"))
    if match["s"]:
        leaf = "downsampler" if match["s"] == "downsamplers" else "upsampler"
    else:
        leaf = match["t"] or match["p"] or match["r"]
    return kind, index, leaf


def group_of(leaf: str) -> str:
    """The smallest group holding `leaf` ('attention', 'transformer' or 'conv')."""
    if leaf in ATTENTION_LEAVES:
        return "attention"
    if leaf in TRANSFORMER_EXTRA_LEAVES:
        return "transformer"
    if leaf in CONV_LEAVES:
        return "conv"
    raise ValueError(f"{leaf!r} is not a layer of any group; layers: {', '.join(LEAVES)}")


def group_leaves(modules: list[str], attention: list[str], projections: list[str]) -> list[str]:
    """The leaves the groups pick, the attention ones narrowed to `attention` x `projections`."""
    leaves: list[str] = []
    if "attention" in modules or "transformer" in modules:
        leaves += [f"{attn}.{proj}" for attn in attention for proj in projections]
    if "transformer" in modules:
        leaves += list(TRANSFORMER_EXTRA_LEAVES)
    if "conv" in modules:
        leaves += list(CONV_LEAVES)
    return leaves


def uses_conv_rank(kernel: tuple[int, int]) -> bool:
    """kohya's rule: a k x k convolution (k > 1) takes conv_rank / conv_alpha; a Linear layer
    or a 1 x 1 convolution (SD 1.x's proj_in, a shortcut) takes rank / alpha."""
    return tuple(kernel) != (1, 1)
