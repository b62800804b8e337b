"""The built-in demo: a small pretrained base model, a style dataset and a style score.

Where its files live is importable without torch (the GUI's "Try the demo" reads it).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = ROOT / "assets" / "demo"
DEMO_BASE = DEMO_DIR / "base"
DEMO_DATASET = DEMO_DIR / "dataset"
DEMO_PRESET = "demo"
