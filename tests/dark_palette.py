"""A dark system palette (Fusion's dark colours), for tests and dark screenshots: the offscreen
and Xvfb platforms have no system theme to switch to dark."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette

_COLOURS = {
    QPalette.Window: "#353535", QPalette.WindowText: "#ffffff", QPalette.Base: "#2a2a2a",
    QPalette.AlternateBase: "#424242", QPalette.ToolTipBase: "#353535",
    QPalette.ToolTipText: "#ffffff", QPalette.PlaceholderText: "#a0a0a0", QPalette.Text: "#ffffff",
    QPalette.Button: "#353535", QPalette.ButtonText: "#ffffff", QPalette.BrightText: "#ff5050",
    QPalette.Light: "#505050", QPalette.Midlight: "#424242", QPalette.Mid: "#2a2a2a",
    QPalette.Dark: "#232323", QPalette.Shadow: "#141414", QPalette.Highlight: "#2a82da",
    QPalette.HighlightedText: "#ffffff", QPalette.Link: "#5aa0ff", QPalette.LinkVisited: "#b48cff",
}


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, colour in _COLOURS.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.WindowText, QPalette.Text, QPalette.ButtonText):
        palette.setColor(QPalette.Disabled, role, QColor("#7f7f7f"))
    return palette
