"""What a base model means for the window, on top of `trainer.families.layout` (torch-free).

The trainer's families package reads the header or configs, detects the family and prediction
type and does the module arithmetic (`describe_model`, `unet_blocks`, `selected_modules`,
`network_parameter_count`); this module only adds what the sections decide from it:

- `tree_blocks`: which blocks the layer tree shows (the model's own, else the SD 1.x layout);
- `follow_model`: which dataset and sampling sizes move when another model is picked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.config import DatasetConfig, TrainConfig
from trainer.families import get_family
from trainer.families.layout import (ModelDescription, UNetBlock, attention_blocks,
                                     describe_model, layer_parameter_count,
                                     native_resolution, network_parameter_count,
                                     selected_modules, text_encoder_modules, unet_blocks)

__all__ = [
    "FALLBACK_FAMILY",
    "PREDICTION_NAMES",
    "Follow",
    "ModelDescription",
    "attention_blocks",
    "describe_model",
    "effective",
    "follow_model",
    "known_layout",
    "layer_parameter_count",
    "network_parameter_count",
    "native_resolution",
    "prediction_text",
    "selected_modules",
    "text_encoder_modules",
    "tree_blocks",
    "UNetBlock",
    "unet_blocks",
]

FALLBACK_FAMILY = "sd1"  # the layout the layer tree shows before a model is picked
PREDICTION_NAMES = {"epsilon": "noise (epsilon)", "v_prediction": "v-prediction"}


def prediction_text(description: ModelDescription) -> str:
    """'noise (epsilon) — the folder's scheduler says epsilon', with what to do when the
    prediction type is only assumed."""
    name = PREDICTION_NAMES.get(description.prediction_type, description.prediction_type)
    text = f"{name} — {description.prediction_reason}"
    if description.prediction_reason.startswith("assumed"):
        text += ". If the model card says v-prediction, choose it under Advanced."
    return text


def effective(description: ModelDescription, prediction_override: str) -> ModelDescription:
    """The description with the user's Prediction type (Advanced) applied: an SD 2.x file
    without a v_pred key that the user marks v-prediction is a 768 px model."""
    if not description.family or prediction_override in ("auto", description.prediction_type):
        return description
    family = get_family(description.family)
    return ModelDescription(
        family=description.family, label=family.display_label(prediction_override),
        prediction_type=prediction_override,
        prediction_reason=f"chosen under Advanced (the model says "
                          f"{PREDICTION_NAMES.get(description.prediction_type, '?')})",
        native_resolution=native_resolution(description.family, prediction_override),
        message=description.message, usable=description.usable,
        unet_config=description.unet_config)


def tree_blocks(description: ModelDescription) -> tuple[str, list[UNetBlock]]:
    """(family, blocks) for the layer tree: the picked model's real blocks, or the SD 1.x
    layout while no model (or a model without a readable layout, such as a .ckpt) is picked."""
    if known_layout(description):
        return description.family, unet_blocks(description.family, description.unet_config)
    family = get_family(FALLBACK_FAMILY)
    return family.name, unet_blocks(family.name, family.config("unet"))


def known_layout(description: ModelDescription) -> bool:
    """Whether the model's U-Net layout is known, with at least one attention block."""
    return bool(description.family and description.unet_config
                and attention_blocks(description.family, description.unet_config))


@dataclass
class Follow:
    """What picking a model changes: {"section.name": value} and a sentence for each change."""

    changes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def follow_model(config: TrainConfig, previous_native: int, native: int, label: str) -> Follow:
    """The sizes that move when a model of native size `native` replaces one of
    `previous_native` (0: none was picked, or it had no known size).

    The rule: `dataset.resolution` follows the model only while the user has not set it
    themselves, which is taken to be when it still equals the config's default or the previous
    model's native size; a size the user typed (768 with no model yet, say) is kept. The preview
    width / height follow the same way when they are set and equal the old resolution (unset,
    they follow the resolution anyway). If the bucket range then has no room for the new size
    (the largest bucket side is not above it, or the smallest is above it), it is widened to
    native / 2 .. 2 x native (SDXL: 2048), never narrowed. Nothing moves when `native` is 0.
    """
    out = Follow()
    dataset = config.dataset
    old = dataset.resolution
    default = DatasetConfig.model_fields["resolution"].default
    if not native or old == native or old not in (default, previous_native):
        return out
    out.changes["dataset.resolution"] = native
    out.notes.append(f"Resolution moved from {old} to {native} px, the native size of this "
                     f"{label} model; type another size on the Dataset page to keep it.")
    sizes = [name for name in ("width", "height") if getattr(config.sampling, name) == old]
    for name in sizes:
        out.changes[f"sampling.{name}"] = native
    if sizes:
        out.notes.append(f"Preview {' and '.join(sizes)} moved from {old} to {native} px.")
    low, high = dataset.min_bucket_reso, dataset.max_bucket_reso
    if high <= native:
        out.changes["dataset.max_bucket_reso"] = 2 * native
        out.notes.append(f"Largest bucket widened from {high} to {2 * native} px so that "
                         f"non-square images keep their shape at {native} px.")
    if low > native:
        out.changes["dataset.min_bucket_reso"] = native // 2
        out.notes.append(f"Smallest bucket lowered from {low} to {native // 2} px.")
    return out
