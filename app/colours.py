"""Colours by meaning, taken from the window's palette so that a light and a dark system theme
both read well. Nothing in app/ hard-codes a colour: it asks for a tone here.

Each tone has a shade for light and one for dark backgrounds; the one that stands out more
against the palette's background is used (a dark window gets a lighter red). Widgets
given a tone with `set_tone` are re-coloured by `refresh_tones` when the palette changes (the
main window calls it when the system switches between light and dark).

`use_style` sets the window's style: Fusion, with check boxes whose outline stands out 3:1
from the field behind them (WCAG's bar for controls). Fusion draws that outline in the window
colour darkened, so in a dark palette an unticked box on a dark list (the target-layer tree)
was invisible.
"""

from __future__ import annotations

from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QProxyStyle, QStyle, QStyleOption, QWidget

ERROR, MUTED, CURVE, SECOND_CURVE = "error", "muted", "curve", "second_curve"
NOTE = "note"  # the window changed a setting for the user (the resolution following the model)
# (on a light background, on a dark one)
_TONES = {ERROR: ("#b42020", "#ff7b7b"), NOTE: ("#1d5a9e", "#8cc0ff"),
          CURVE: ("#2a5ad8", "#78a8ff"),
          SECOND_CURVE: ("#b8600c", "#ffaa4c")}


def tone_colour(tone: str, palette: QPalette | None = None) -> QColor:
    """The colour of `tone` for this palette (the application's when None)."""
    palette = palette or QGuiApplication.palette()
    if tone == MUTED:
        return palette.color(QPalette.PlaceholderText)
    background = palette.color(QPalette.Base)
    return max((QColor(shade) for shade in _TONES[tone]), key=lambda c: contrast(c, background))


def set_tone(widget: QWidget, tone: str | None) -> None:
    """Show a label's text in a tone (None: the normal text colour), now and after a palette
    change."""
    widget.setProperty("tone", tone or "")
    widget.setStyleSheet(f"color: {tone_colour(tone).name()};" if tone else "")


def refresh_tones(root: QWidget) -> None:
    for widget in root.findChildren(QWidget):
        tone = widget.property("tone")
        if tone:
            set_tone(widget, tone)


def luminance(colour: QColor) -> float:
    """Relative luminance (WCAG 2): 0 for black, 1 for white."""
    def linear(channel: float) -> float:
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4
    return (0.2126 * linear(colour.redF()) + 0.7152 * linear(colour.greenF())
            + 0.0722 * linear(colour.blueF()))


def contrast(one: QColor, other: QColor) -> float:
    """WCAG contrast ratio, 1 (none) to 21 (black on white); 4.5 is the bar for body text."""
    light, dark = sorted((luminance(one), luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def outline_colour(palette: QPalette, bar: float = 3.0) -> QColor:
    """The first shade from the field (Base) toward the text colour that stands `bar`:1 out
    from the field; the text colour itself if none does."""
    base, text = palette.color(QPalette.Base), palette.color(QPalette.Text)
    for step in range(1, 21):
        t = step / 20
        shade = QColor.fromRgbF(*(b + t * (f - b) for b, f in zip(
            (base.redF(), base.greenF(), base.blueF()), (text.redF(), text.greenF(), text.blueF()))))
        if contrast(shade, base) >= bar:
            return shade
    return text


class _VisibleCheckBoxes(QProxyStyle):
    """Fusion, drawing check-box outlines in `outline_colour` where its own would not stand out
    (it takes the window colour darkened 140 %: see `use_style`)."""

    _FUSION_DARKER = 140

    def drawPrimitive(self, element, option: QStyleOption, painter, widget=None) -> None:  # noqa: N802
        if element in (QStyle.PE_IndicatorCheckBox, QStyle.PE_IndicatorItemViewItemCheck):
            palette = option.palette
            fusion_outline = palette.color(QPalette.Window).darker(self._FUSION_DARKER)
            if contrast(fusion_outline, palette.color(QPalette.Base)) < 3.0:
                option = type(option)(option)
                adjusted = QPalette(palette)
                # 3.5, not 3: Fusion draws the outline 10 % lighter than it is given
                adjusted.setColor(QPalette.Window,
                                  outline_colour(palette, 3.5).lighter(self._FUSION_DARKER))
                option.palette = adjusted
        super().drawPrimitive(element, option, painter, widget)


def use_style(app: QApplication) -> None:
    """Fusion (it follows the system's light or dark colours) with visible check boxes."""
    style = _VisibleCheckBoxes("Fusion")
    app.setStyle(style)
    app._style = style  # the application owns it; Python must not collect it first
