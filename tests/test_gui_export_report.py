"""The Export section shows the verification report as a list: one row per check, failed ones
bold in the error colour, metadata text never read as markup."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette

from app.colours import contrast
from app.main import MainWindow
from trainer.verify import VerifyReport

MARKUP = '<b>Title</b><img src="file:///etc/passwd">'


def printed_report() -> str:
    """What `lora-train export` prints: the real VerifyReport.format(), one check failing."""
    report = VerifyReport(Path("my_lora.safetensors"), Path("/models/base"))
    report.add("keys follow the kohya grammar", True, "96 modules")
    report.add("metadata matches the tensors", False, f"modelspec.title is {MARKUP}")
    report.add("diffusers loads every module", True, "96 U-Net modules")
    report.skipped.append("outputs: no base model given")
    return f"LoRA written to my_lora.safetensors\n{report.format()}\n"


def test_checks_are_listed_with_the_failed_one_highlighted(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    checks = window.export.exporter.checks
    rows = checks.show_report(printed_report())
    assert [row.status for row in rows] == ["ok", "FAIL", "ok", "skip"]
    items = [checks.rows.item(i) for i in range(checks.rows.count())]
    assert items[0].text() == "✓  keys follow the kohya grammar — 96 modules"
    assert items[1].text() == f"✗  metadata matches the tensors — modelspec.title is {MARKUP}"
    assert items[3].text() == "–  skipped — outputs: no base model given"
    assert checks.verdict.text() == "FAILED: 2 of 3 checks pass, 1 fail"
    assert checks.verdict.textFormat() == Qt.PlainText
    base = checks.rows.palette().color(QPalette.Base)
    assert items[1].font().bold() and not items[0].font().bold()
    assert contrast(items[1].foreground().color(), base) >= 4.5
    assert items[1].foreground() != items[0].foreground()


def test_an_export_without_checks_shows_no_list(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    checks = window.export.exporter.checks
    assert checks.show_report("LoRA written to x.safetensors\nnot verified (--no-verify)\n") == []
    assert not checks.isVisibleTo(window) and checks.rows.count() == 0
