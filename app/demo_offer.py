"""'Try the demo': the banner a first start shows, and loading the demo's settings.

The demo (presets/demo.toml) trains a style LoRA on the project's own small base model and a
16-picture dataset, both shipped in assets/demo, in a few minutes on a CPU. Loading it is
loading a preset whose paths point there; nothing else is special.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton

from trainer.config import TrainConfig
from trainer.config_io import build_config, load_config_data, preset_path
from trainer.demo import DEMO_BASE, DEMO_DATASET, DEMO_PRESET

OFFER = ("New here? Try the demo: a style LoRA on a small built-in model, trained in a few "
         "minutes on this computer's CPU. Press Start and watch the previews change.")


def demo_available() -> bool:
    """The demo's files ship with the project; a trimmed install may lack them."""
    return DEMO_BASE.is_dir() and DEMO_DATASET.is_dir()


def is_demo_config(config: TrainConfig) -> bool:
    """The demo's model and images: settings the session must not keep as the user's project
    (however they got there: Try the demo, a queued demo run taken back to edit)."""
    return (config.model.path is not None and Path(config.model.path) == DEMO_BASE
            and any(Path(folder.path) == DEMO_DATASET for folder in config.dataset.folders))


def demo_config() -> TrainConfig:
    return build_config(load_config_data(preset_path(DEMO_PRESET)), source=DEMO_PRESET)


class DemoBanner(QFrame):
    """A dismissable strip across the top of the window with the 'Try the demo' button."""

    accepted = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setFrameShape(QFrame.StyledPanel)
        layout = QHBoxLayout(self)
        text = QLabel(OFFER)
        text.setWordWrap(True)
        layout.addWidget(text, 1)
        self.try_button = QPushButton("Try the demo")
        self.try_button.setToolTip("Fill in the demo's base model, images and settings, then "
                                   "go to the Run section")
        self.try_button.clicked.connect(self._accept)
        layout.addWidget(self.try_button)
        close = QPushButton("No thanks")
        close.clicked.connect(self.hide)
        layout.addWidget(close)

    def _accept(self) -> None:
        self.hide()
        self.accepted.emit()
