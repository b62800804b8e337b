"""Small layout helpers shared by the sections: a scrolling form page and a folding group."""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import (QFormLayout, QGroupBox, QLabel, QScrollArea, QToolButton,
                               QVBoxLayout, QWidget)


class Page(QScrollArea):
    """A section page: a title, a sentence about it, then a form; scrolls on small screens."""

    def __init__(self, title: str, intro: str = "") -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.NoFrame)
        inner = QWidget()
        self.body = QVBoxLayout(inner)
        self.body.setAlignment(Qt.AlignTop)
        heading = QLabel(title)
        heading.setTextFormat(Qt.PlainText)
        font = heading.font()
        font.setPointSizeF(font.pointSizeF() * 1.4)
        font.setBold(True)
        heading.setFont(font)
        self.body.addWidget(heading)
        if intro:
            note = QLabel(intro)
            note.setTextFormat(Qt.PlainText)
            note.setWordWrap(True)
            self.body.addWidget(note)
        self.form = QFormLayout()
        self.form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.body.addLayout(self.form)
        self.setWidget(inner)
        inner.installEventFilter(self)

    # QScrollArea sizes its widget by minimumSizeHint, which ignores wrapped labels' extra
    # lines: with rows shown or a label wrapping onto two lines, the form got less height than
    # it needs and drew the rows below a tall widget over it. The height for the viewport's
    # width is the page's real minimum.
    def eventFilter(self, watched, event) -> bool:
        if watched is self.widget() and event.type() == QEvent.LayoutRequest:
            self._fit_height()
        return super().eventFilter(watched, event)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_height()

    def _fit_height(self) -> None:
        layout = self.widget().layout()
        if layout is not None and layout.hasHeightForWidth():
            self.widget().setMinimumHeight(layout.heightForWidth(self.viewport().width()))

    def row(self, label: str, widget: QWidget) -> None:
        # An empty QLabel rather than none: a row without a label widget is laid out at its
        # size hint, so a wrapping label there got the height of a narrow, many-line text.
        self.form.addRow(label or QLabel(), widget)


class Folding(QWidget):
    """A group that starts folded away ("Advanced"); a click on its header unfolds it."""

    def __init__(self, title: str) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 0)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.RightArrow)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.box = QGroupBox()
        self.form = QFormLayout(self.box)
        self.box.hide()
        self.toggle.toggled.connect(self._unfold)
        layout.addWidget(self.toggle)
        layout.addWidget(self.box)

    def _unfold(self, open_: bool) -> None:
        self.box.setVisible(open_)
        self.toggle.setArrowType(Qt.DownArrow if open_ else Qt.RightArrow)

    def row(self, label: str, widget: QWidget) -> None:
        self.form.addRow(label or QLabel(), widget)


def plain_label(text: str = "", wrap: bool = True) -> QLabel:
    """A label for text that may come from files or the user: never interpreted as rich text."""
    label = QLabel(text)
    label.setTextFormat(Qt.PlainText)
    label.setWordWrap(wrap)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    return label
