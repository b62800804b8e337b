"""Base models: detect, load (offline) and build tiny test models, for every family.

Importing this package is cheap: torch, diffusers and transformers are imported only when
``load_base_model`` or ``make_tiny_model`` is first used.

    BaseModel, ModelError
    detect_architecture(path) -> "sd1" | "sd2" | "sd2_v" | "sdxl"
    load_base_model(path, *, dtype=torch.float32, device="cpu") -> BaseModel
    make_tiny_model(out_dir, *, single_file=None, seed=0, family="sd1") -> None
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.families.errors import ModelError

from .base_model import BaseModel
from .detect import FAMILY_NAMES, detect_architecture

if TYPE_CHECKING:
    from .loading import load_base_model
    from .tiny import make_tiny_model

__all__ = ["BaseModel", "ModelError", "FAMILY_NAMES", "detect_architecture", "load_base_model",
           "make_tiny_model"]

_LAZY = {"load_base_model": "loading", "make_tiny_model": "tiny"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
