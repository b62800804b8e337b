"""`lora-studio`: the desktop window. The GUI process never imports torch (see DESIGN.md)."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication, QLabel, QMainWindow


class MainWindow(QMainWindow):
    """The main window; its sections arrive with the GUI work (issue: desktop application)."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("LoRA Studio")
        self.resize(1200, 760)
        placeholder = QLabel("LoRA Studio - use `lora-train` for now; the window's sections "
                             "are being built.")
        placeholder.setMargin(24)
        self.setCentralWidget(placeholder)


def main(argv: list[str] | None = None) -> int:
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    window = MainWindow()
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
