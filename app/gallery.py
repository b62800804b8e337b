"""The sample gallery: rows = steps, columns = prompts, the strength-0 baseline beside the LoRA
image. Click an image to see it large; right-click to use it as the cover image. The view
follows the newest row while it is scrolled to the bottom; scrolled up, it stays put."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QDialog, QGridLayout, QLabel, QMenu, QScrollArea, QVBoxLayout,
                               QWidget)

from app.colours import MUTED, set_tone
from trainer.events import Sample

THUMB = 128
FOLLOW_SLACK_PX = 8  # this close to the bottom still counts as "at the newest row"


def strength_text(scale: float) -> str:
    """'without LoRA (strength 0)' or 'LoRA strength 0.8'."""
    return "without LoRA (strength 0)" if scale == 0 else f"LoRA strength {scale:g}"


class Thumb(QLabel):
    clicked = Signal(object)
    cover_requested = Signal(object)

    def __init__(self, sample: Sample, pixmap: QPixmap) -> None:
        super().__init__()
        self.sample, self.full = sample, pixmap
        self.setPixmap(pixmap.scaled(THUMB, THUMB, Qt.KeepAspectRatio, Qt.SmoothTransformation))
        self.setToolTip(f"step {sample.step} · {strength_text(sample.scale)} · seed "
                        f"{sample.seed}\n{sample.prompt}")
        self.setCursor(Qt.PointingHandCursor)

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.button() == Qt.LeftButton:
            self.clicked.emit(self)

    def contextMenuEvent(self, event) -> None:  # noqa: N802
        menu = QMenu(self)
        menu.addAction("Use as cover image", lambda: self.cover_requested.emit(self.sample))
        menu.exec(event.globalPos())


class Gallery(QScrollArea):
    cover_requested = Signal(object)  # a Sample

    def __init__(self) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setMinimumHeight(160)
        self.inner = QWidget()
        self.grid = QGridLayout(self.inner)
        self.grid.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.setWidget(self.inner)
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._scrolled)
        bar.rangeChanged.connect(self._grown)
        self.clear()

    def _scrolled(self, value: int) -> None:
        # the user scrolling up stops the following; scrolling back to the bottom resumes it
        self.following = value >= self.verticalScrollBar().maximum() - FOLLOW_SLACK_PX

    def _grown(self, _minimum: int, maximum: int) -> None:
        # a new row makes the page taller after the layout runs: move along with it then
        if self.following:
            self.verticalScrollBar().setValue(maximum)

    def clear(self) -> None:
        """Remove every image and header; the next run's rows are followed again."""
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.prompts: list[str] = []
        self.steps: list[int] = []
        self.cells: dict[tuple[int, str, float], Thumb] = {}
        self.following = True

    def _column(self, prompt: str, scale: float) -> int:
        if prompt not in self.prompts:
            self.prompts.append(prompt)
            header = QLabel(prompt if len(prompt) < 60 else prompt[:57] + "...")
            header.setTextFormat(Qt.PlainText)
            header.setToolTip(prompt)
            header.setWordWrap(True)
            header.setMaximumWidth(2 * THUMB + 6)
            column = 1 + 2 * self.prompts.index(prompt)
            self.grid.addWidget(header, 0, column, 1, 2)
            for offset, text in enumerate(("without LoRA", "with LoRA")):
                sub = QLabel(text)
                set_tone(sub, MUTED)
                self.grid.addWidget(sub, 1, column + offset, Qt.AlignHCenter)
        return 1 + 2 * self.prompts.index(prompt) + (0 if scale == 0 else 1)

    def _row(self, step: int) -> int:
        if step not in self.steps:
            self.steps.append(step)
            label = QLabel(f"step {step}")
            label.setTextFormat(Qt.PlainText)
            self.grid.addWidget(label, 1 + len(self.steps), 0, Qt.AlignTop)
        return 2 + self.steps.index(step)

    def add(self, sample: Sample) -> bool:
        """Place one preview; False when it has no image."""
        if not sample.png_bytes:
            return False
        pixmap = QPixmap()
        if not pixmap.loadFromData(sample.png_bytes, "PNG"):
            return False
        thumb = Thumb(sample, pixmap)
        thumb.clicked.connect(self.enlarge)
        thumb.cover_requested.connect(self.cover_requested)
        key = (sample.step, sample.prompt, sample.scale)
        if key in self.cells:
            self.cells[key].deleteLater()
        self.cells[key] = thumb
        self.grid.addWidget(thumb, self._row(sample.step), self._column(sample.prompt, sample.scale))
        return True

    def enlarge(self, thumb: Thumb) -> QDialog:
        """The image large, with its step, strength, seed and prompt under it (the title bar
        alone may not show: some window managers hide it, and it is easy to overlook)."""
        dialog = QDialog(self)
        sample = thumb.sample
        strength = strength_text(sample.scale)
        dialog.setWindowTitle(f"Step {sample.step} - {strength}")
        layout = QVBoxLayout(dialog)
        image = QLabel()
        image.setPixmap(thumb.full.scaled(max(512, thumb.full.width()), max(512, thumb.full.height()),
                                          Qt.KeepAspectRatio, Qt.SmoothTransformation))
        layout.addWidget(image)
        caption = QLabel(f"step {sample.step} · {strength} · seed {sample.seed}\n{sample.prompt}")
        caption.setTextFormat(Qt.PlainText)
        caption.setWordWrap(True)
        layout.addWidget(caption)
        dialog.setAttribute(Qt.WA_DeleteOnClose)
        dialog.show()
        self.last_dialog = dialog
        return dialog
