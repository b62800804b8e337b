"""The verification report of an export as a list: one row per check, passed or failed, the
failed ones bold in the palette's error colour, and the verdict above them.

The rows come from what `lora-train export` prints (trainer.verify's VerifyReport.format:
`  ok    name: detail`, `  FAIL  name: detail`, `  skip  reason`, then `PASSED: ...` or
`FAILED: ...`). Names and details can carry text from the file's metadata, so every row is a
plain list item and the verdict a PlainText label: nothing is ever read as rich text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from app.colours import ERROR, MUTED, set_tone, tone_colour
from app.forms import plain_label

CHECK_LINE = re.compile(r"^  (?P<status>ok|FAIL|skip)\s+(?P<text>.*)$")
VERDICT_LINE = re.compile(r"^(PASSED|FAILED): ")
MARKS = {"ok": "✓", "FAIL": "✗", "skip": "–"}
TONES = {"ok": None, "FAIL": ERROR, "skip": MUTED}


@dataclass
class CheckRow:
    status: str  # ok | FAIL | skip
    name: str
    detail: str


def parse_report(text: str) -> tuple[list[CheckRow], str]:
    """(one row per check line, the verdict line or "") of an export's output."""
    rows, verdict = [], ""
    for line in text.splitlines():
        match = CHECK_LINE.match(line)
        if match:
            name, _, detail = match["text"].partition(": ")
            if match["status"] == "skip":
                name, detail = "skipped", match["text"]
            rows.append(CheckRow(match["status"], name, detail))
        elif VERDICT_LINE.match(line):
            verdict = line
    return rows, verdict


class CheckList(QWidget):
    """The verdict and the checks of the last export."""

    def __init__(self) -> None:
        super().__init__()
        self.verdict = plain_label()
        self.rows = QListWidget()
        self.rows.setWordWrap(True)
        self.rows.setMinimumHeight(120)
        self.rows.setToolTip("What was checked in the written file: ✓ passed, ✗ failed.")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.verdict)
        layout.addWidget(self.rows, 1)
        self.clear()

    def clear(self) -> None:
        self.rows.clear()
        self.verdict.setText("")
        self.setVisible(False)

    def show_report(self, text: str) -> list[CheckRow]:
        """Show the checks found in an export's output; hidden when there are none (an export
        with --no-verify, or one that failed before checking)."""
        rows, verdict = parse_report(text)
        self.rows.clear()
        for row in rows:
            item = QListWidgetItem(f"{MARKS[row.status]}  {row.name}"
                                   + (f" — {row.detail}" if row.detail else ""))
            item.setData(Qt.UserRole, row.status)
            item.setToolTip(row.detail)
            self.rows.addItem(item)
        self._colour_rows()
        failed = sum(row.status == "FAIL" for row in rows)
        self.verdict.setText(verdict or ("" if not rows else f"{failed} check(s) failed"))
        set_tone(self.verdict, ERROR if failed or verdict.startswith("FAILED") else None)
        self.setVisible(bool(rows))
        return rows

    def _colour_rows(self) -> None:
        for index in range(self.rows.count()):
            item = self.rows.item(index)
            tone = TONES[item.data(Qt.UserRole)]
            if tone:
                item.setForeground(tone_colour(tone))
            font = item.font()
            font.setBold(tone == ERROR)
            item.setFont(font)

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.type() in (QEvent.PaletteChange, QEvent.ApplicationPaletteChange):
            self._colour_rows()  # light <-> dark
        super().changeEvent(event)
