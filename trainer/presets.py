"""Presets as training recipes: applying one keeps the user's project.

A preset (built-in or saved by the user) says how to train: sizes, rank, schedule, learning
rates. What the user is training on and where it goes (the image folders, the base model, the
output name and folder, the sample prompts, the file's metadata) belongs to the project and
survives applying a preset. `setting_changes` lists what a load changed, for the window's
status line and its undo; `missing_paths` names paths in a config that are not on this disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.config import TrainConfig

# (section, field) pairs that belong to the project; None: the whole section
PROJECT_FIELDS: dict[str, tuple[str, ...] | None] = {
    "dataset": ("folders", "kohya_config", "caption_extension", "trigger_word"),
    "model": ("path", "prediction_type"),
    "sampling": ("prompts",),
    "output": ("dir", "name"),
    "metadata": None,
}


def apply_preset(project: TrainConfig, preset: TrainConfig) -> TrainConfig:
    """`preset`'s recipe with `project`'s folders, model, prompts, output and metadata."""
    data = preset.model_dump()
    mine = project.model_dump()
    for section, names in PROJECT_FIELDS.items():
        for name in names if names is not None else mine[section]:
            data[section][name] = mine[section][name]
    return TrainConfig.model_validate(data)


def recipe_only(config: TrainConfig) -> TrainConfig:
    """`config` with the project's fields back at their defaults: what Save as preset writes,
    so a saved preset never carries one project's folders or model into another."""
    return apply_preset(TrainConfig(), config)


def _flat(config: TrainConfig) -> dict[str, Any]:
    return {f"{section}.{name}": value
            for section, fields in config.model_dump().items() if isinstance(fields, dict)
            for name, value in fields.items()}


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} item(s)" if value and isinstance(value[0], dict) else \
            ", ".join(str(v) for v in value) or "none"
    return "none" if value is None or value == "" else str(value)


def setting_changes(before: TrainConfig, after: TrainConfig) -> list[str]:
    """Each setting that differs, as 'section.name: old -> new', in config order."""
    old, new = _flat(before), _flat(after)
    return [f"{key}: {_shown(old[key])} -> {_shown(new[key])}"
            for key in new if old.get(key) != new[key]]


def missing_paths(config: TrainConfig) -> list[str]:
    """'what: path' for each path the config names that does not exist on this disk (a file
    from another computer, a moved dataset). The output folder is made when needed."""
    named: list[tuple[str, Path | None]] = [
        ("base model", config.model.path), ("kohya dataset file", config.dataset.kohya_config),
        ("LoRA to continue from", config.network.init_from),
        ("cover image", config.metadata.cover_image)]
    named += [("image folder", folder.path) for folder in config.dataset.folders]
    return [f"{what}: {path}" for what, path in named
            if path is not None and not Path(path).expanduser().exists()]
