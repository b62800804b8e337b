"""The binding layer: each widget edits one config field, and shows that field's error.

An edit is `setattr` on the config section (pydantic validates the assignment); a refused value
stays in the widget, the config keeps its last good value, and a red line under the widget says
what is allowed. The window asks `Binder.errors` whether Start may be pressed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QLabel, QLineEdit,
                               QPlainTextEdit, QSpinBox, QVBoxLayout, QWidget)

from app.colours import ERROR, set_tone
from trainer.config import TrainConfig
from trainer.config_io import describe_validation_error


@dataclass
class Binding:
    section: str
    name: str
    widget: QWidget
    get: Callable[[], Any]
    put: Callable[[Any], None]
    error_label: QLabel

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"


def _optional_number(text: str, kind: type) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        return text  # let pydantic say what is wrong with it


def _number_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class Binder(QObject):
    """Owns the config being edited and every widget bound to one of its fields."""

    changed = Signal(str)          # "section.name" of a field that took a new value
    errors_changed = Signal()

    def __init__(self, config: TrainConfig | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config = config or TrainConfig()
        self.bindings: list[Binding] = []
        self.errors: dict[str, str] = {}
        # "section.name" -> f(new value) -> {other field of that section: value} to set with
        # it, checked together (the bucket range moving along with the resolution)
        self.companions: dict[str, Callable[[Any], dict[str, Any]]] = {}
        self._loading = False

    # -- building -------------------------------------------------------------------------
    def field(self, widget: QWidget, section: str, name: str, tooltip: str = "",
              *, get: Callable[[], Any] | None = None,
              put: Callable[[Any], None] | None = None) -> QWidget:
        """Bind `widget` to `section.name`; returns a container with the widget and its error."""
        get, put, signal = self._accessors(widget, get, put)
        error = QLabel()
        error.setTextFormat(Qt.PlainText)
        error.setWordWrap(True)
        set_tone(error, ERROR)
        error.setObjectName(f"error:{section}.{name}")
        error.hide()
        binding = Binding(section, name, widget, get, put, error)
        self.bindings.append(binding)
        widget.setObjectName(f"{section}.{name}")
        if tooltip:
            widget.setToolTip(tooltip)
        put(getattr(getattr(self.config, section), name))
        if signal is not None:
            signal.connect(lambda *_: self.commit(binding))
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        layout.addWidget(widget)
        layout.addWidget(error)
        return box

    @staticmethod
    def _accessors(widget: QWidget, get: Any, put: Any) -> tuple[Any, Any, Any]:
        if isinstance(widget, QCheckBox):
            return (get or widget.isChecked, put or (lambda v: widget.setChecked(bool(v))),
                    widget.toggled)
        if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
            return get or widget.value, put or widget.setValue, widget.valueChanged
        if isinstance(widget, QComboBox):
            def combo_put(value: Any) -> None:
                index = widget.findData(value)
                widget.setCurrentIndex(index if index >= 0 else widget.findText(str(value)))
            return (get or widget.currentData, put or combo_put, widget.currentIndexChanged)
        if isinstance(widget, QPlainTextEdit):
            return (get or (lambda: [line.strip() for line in widget.toPlainText().splitlines()
                                     if line.strip()]),
                    put or (lambda v: widget.setPlainText("\n".join(v or []))),
                    widget.textChanged)
        if isinstance(widget, QLineEdit):
            return (get or widget.text, put or (lambda v: widget.setText("" if v is None else str(v))),
                    widget.textEdited)
        return get, put, None

    # -- editing ---------------------------------------------------------------------------
    def commit(self, binding: Binding) -> None:
        if self._loading:
            return
        self.set_value(binding.section, binding.name, binding.get(), binding)

    def set_value(self, section: str, name: str, value: Any, binding: Binding | None = None) -> bool:
        """Assign with validation; on refusal the config keeps its old value and the error shows."""
        target = getattr(self.config, section)
        old = getattr(target, name)
        key = f"{section}.{name}"
        along = self.companions[key](value) if key in self.companions else {}
        try:
            if along:
                self._set_together(target, {**along, name: value})
            else:
                setattr(target, name, value)
        except ValidationError as error:
            target.__dict__[name] = old  # a section-wide check may have assigned before failing
            lines = describe_validation_error(error).splitlines()
            message = "; ".join(line.split(": ", 1)[-1] for line in lines) or str(error)
            self._set_error(key, message)
            return False
        self._set_error(key, "")
        for other, other_value in along.items():
            self._show(f"{section}.{other}", other_value)
            self._set_error(f"{section}.{other}", "")
            self.changed.emit(f"{section}.{other}")
        self.changed.emit(key)
        return True

    @staticmethod
    def _set_together(target: Any, values: dict[str, Any]) -> None:
        """Assign several fields of one section as one change: the section is checked as a
        whole with all of them (one by one, each would fail the range check in between)."""
        checked = type(target).model_validate({**target.model_dump(), **values})
        for name in values:
            target.__dict__[name] = getattr(checked, name)

    def _show(self, key: str, value: Any) -> None:
        """The widgets bound to `key` show `value` without committing it again."""
        self._loading = True
        try:
            for binding in self.bindings:
                if binding.key == key:
                    binding.put(value)
        finally:
            self._loading = False

    def set_and_show(self, section: str, name: str, value: Any) -> bool:
        """`set_value`, and the widgets bound to the field show the new value (for a change
        the window makes on the user's behalf, such as the resolution following the model)."""
        if not self.set_value(section, name, value):
            return False
        self._show(f"{section}.{name}", value)
        return True

    def _set_error(self, key: str, message: str) -> None:
        had = self.errors.get(key, "")
        if message:
            self.errors[key] = message
        else:
            self.errors.pop(key, None)
        for binding in self.bindings:
            if binding.key == key:
                binding.error_label.setText(message)
                binding.error_label.setVisible(bool(message))
        if had != message:
            self.errors_changed.emit()

    # -- loading ---------------------------------------------------------------------------
    def load(self, config: TrainConfig) -> None:
        """Show another config (a preset, a file): every widget takes its value from it."""
        self.config = config
        self._loading = True
        try:
            for binding in self.bindings:
                binding.put(getattr(getattr(config, binding.section), binding.name))
        finally:
            self._loading = False
        for key in list(self.errors):
            self._set_error(key, "")
        self.changed.emit("*")

    def widget(self, key: str) -> QWidget:
        return next(b.widget for b in self.bindings if b.key == key)


# -- widget makers: the ranges are loose on purpose, so pydantic's rules give the messages ----
def spin(minimum: int = 0, maximum: int = 2**31 - 1, step: int = 1, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setSuffix(suffix)
    box.setKeyboardTracking(False)
    return box


def dspin(minimum: float = 0.0, maximum: float = 1e6, step: float = 0.1,
          decimals: int = 3) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    box.setKeyboardTracking(False)
    return box


def combo(choices: list[tuple[str, Any]] | list[str]) -> QComboBox:
    box = QComboBox()
    for choice in choices:
        label, value = choice if isinstance(choice, tuple) else (choice, choice)
        box.addItem(label, value)
    return box


def number_edit(kind: type = float, placeholder: str = "") -> tuple[QLineEdit, dict]:
    """A text field for a number that may be empty (None); returns (widget, get/put kwargs)."""
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    return edit, {"get": lambda: _optional_number(edit.text(), kind),
                  "put": lambda v: edit.setText(_number_text(v))}


def list_edit(separator: str = ",") -> tuple[QLineEdit, dict]:
    """A text field for a list of words, separated by commas."""
    edit = QLineEdit()
    return edit, {"get": lambda: [w.strip() for w in edit.text().split(separator) if w.strip()],
                  "put": lambda v: edit.setText(f"{separator} ".join(v or []))}
