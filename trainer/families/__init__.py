"""Model families behind one small registry, torch-free (the window imports this package).

    get_family("sd2_v") -> the SD 2.x Family (the architecture names of detection map onto it)
    FAMILIES            -> {"sd1": ..., "sd2": ..., "sdxl": ...}

Each family is one module (sd1.py, sd2.py, sdxl.py) building a `Family`; everything that
differs between families is asked of it (see family.py).
"""

from __future__ import annotations

from . import sd1, sd2, sdxl
from .family import Family, TextEncoderSpec

FAMILIES: dict[str, Family] = {f.name: f for f in (sd1.FAMILY, sd2.FAMILY, sdxl.FAMILY)}

__all__ = ["FAMILIES", "Family", "TextEncoderSpec", "get_family"]


def get_family(architecture: str) -> Family:
    """The Family of a detection result ("sd1", "sd2", "sd2_v", "sdxl") or family name."""
    name = "sd2" if architecture == "sd2_v" else architecture
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {architecture!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]

