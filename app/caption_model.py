"""Captions from a model on this computer, in the Caption tools tab: a WD14 tagger (.onnx with
its selected_tags.csv) or a transformers image-to-text folder, run by `lora-train caption
--json` in a child with a progress bar and Cancel (the child stops between two images, so
every caption is old or new). Preview captions the first few images and writes nothing. A
mode that changes existing captions asks first, in place: the button turns into "Yes, change
them" until the mode or folder changes. The model and its settings are remembered."""

from __future__ import annotations

from PySide6.QtWidgets import (QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLineEdit,
                               QProgressBar, QPushButton)

from app.binding import dspin
from app.file_dialogs import pick_file, pick_folder
from app.forms import plain_label
from app.session import settings

MODES = (("missing", "Only images without a caption"),
         ("append", "Add after the existing caption"),
         ("prepend", "Add before the existing caption"),
         ("replace", "Replace the existing caption"))
PREVIEW_IMAGES = 8
ASK = "Yes, change them"


class CaptionModelPanel(QGroupBox):
    def __init__(self, tools) -> None:
        super().__init__("Caption with a model on this computer")
        self.tools = tools
        remembered = settings()
        self.model = QLineEdit(str(remembered.value("captioning/model", "") or ""))
        self.model.setPlaceholderText("a WD14 tagger's .onnx file, or a BLIP / GIT / Florence-2 "
                                      "folder (nothing is downloaded)")
        self.model.editingFinished.connect(self.remember)
        file_button, folder_button = QPushButton("Tagger file..."), QPushButton("Folder...")
        file_button.clicked.connect(self._pick_file)
        folder_button.clicked.connect(self._pick_folder)
        self.mode = QComboBox()
        for value, label in MODES:
            self.mode.addItem(label, value)
        self.mode.currentIndexChanged.connect(self.reset_confirmation)
        self.general = dspin(0.0, 1.0, 0.05, 2)
        self.general.setValue(float(remembered.value("captioning/general", 0.35)))
        self.character = dspin(0.0, 1.0, 0.05, 2)
        self.character.setValue(float(remembered.value("captioning/character", 0.85)))
        self.exclude = QLineEdit(str(remembered.value("captioning/exclude", "") or ""))
        self.exclude.setPlaceholderText("tags never written (a, b)")
        for widget, tip in ((self.general, "Tagger: general tags at least this likely are "
                                           "written (WD14's usual 0.35)."),
                            (self.character, "Tagger: character tags at least this likely "
                                             "(0.85)."),
                            (self.exclude, "Tagger: tags never written, comma-separated.")):
            widget.setToolTip(tip)
        self.preview_button = QPushButton("Preview")
        self.preview_button.setToolTip(f"Caption the first {PREVIEW_IMAGES} images the mode "
                                       "would change and show them; nothing is written.")
        self.preview_button.clicked.connect(lambda: self.run(preview=True))
        self.caption_button = QPushButton("Caption")
        self.caption_button.clicked.connect(lambda: self.run(preview=False))
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop after the image in hand; the captions written so far stay "
                               "(Undo last change puts them back).")
        self.cancel.clicked.connect(tools.child.stop)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self.asked = False
        form = QFormLayout(self)
        path_row = QHBoxLayout()
        for widget in (self.model, file_button, folder_button):
            path_row.addWidget(widget)
        form.addRow("Model", path_row)
        form.addRow("Mode", self.mode)
        tag_row = QHBoxLayout()
        for widget in (plain_label("general tags at least", False), self.general,
                       plain_label("characters at least", False), self.character,
                       plain_label("never write", False), self.exclude):
            tag_row.addWidget(widget)
        form.addRow("Tagger", tag_row)
        buttons = QHBoxLayout()
        for widget in (self.preview_button, self.caption_button, self.cancel, self.progress):
            buttons.addWidget(widget)
        form.addRow(buttons)

    def arguments(self, preview: bool) -> list[str]:
        # --flag=VALUE: a value such as "-_-" must not read as a flag
        args = ["caption", str(self.tools.current_folder()),
                f"--model={self.model.text().strip()}", f"--mode={self.mode.currentData()}",
                "--json", *self.tools.common_args(),
                f"--general-threshold={self.general.value():g}",
                f"--character-threshold={self.character.value():g}"]
        args += [f"--exclude={tag}" for tag in (t.strip() for t in self.exclude.text().split(","))
                 if tag]
        return args + (["--dry-run", "--limit", str(PREVIEW_IMAGES)] if preview else [])

    def run(self, preview: bool) -> bool:
        if not self.model.text().strip():
            self.tools.say("Pick a model first: a WD14 tagger's .onnx file or a captioning "
                           "model's folder on this computer.", problem=True)
            return False
        if not preview and self.mode.currentData() != "missing" and not self.asked:
            self.asked = True  # changing existing captions is asked for, in place
            self.caption_button.setText(ASK)
            self.tools.say(f"'{self.mode.currentText()}' changes the captions the folder has "
                           f"(Undo last change puts them back). Press '{ASK}' to go on.")
            return False
        self.remember()
        self.reset_confirmation()
        self.progress.setRange(0, 0)  # busy until the model is loaded and counts its images
        return self.tools.start(self.arguments(preview), "Loading the model...")

    def handle(self, message: dict) -> None:
        """A line of `caption --json`."""
        event = message.get("event")
        if event == "caption":
            self.progress.setRange(0, message["total"])
            self.progress.setValue(message["done"])
            self.tools.add_row(message["image"], message["before"],
                               message["after"] if message["changed"] else None)
            self.tools.say(f"Captioning: image {message['done']} of {message['total']}")
        elif event == "finished":
            self.progress.setRange(0, max(1, message["total"]))
            self.progress.setValue(message["done"])
            text = (f"Stopped after {message['done']} of {message['total']} images; "
                    if message["stopped"] else "")
            text += (f"{message['changed']} caption(s) would change (preview: nothing written)."
                     if message["dry_run"] else f"{message['changed']} caption(s) written.")
            if message["skipped"]:
                text += f" {len(message['skipped'])} image(s) could not be read."
            self.tools.say(text)

    def ended(self, code: int) -> None:
        if self.progress.maximum() == 0:  # it ended before it counted (an error)
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def reset_confirmation(self, *_: object) -> None:
        self.asked = False
        self.caption_button.setText("Caption")

    def remember(self) -> None:
        remembered = settings()
        remembered.setValue("captioning/model", self.model.text().strip())
        remembered.setValue("captioning/general", self.general.value())
        remembered.setValue("captioning/character", self.character.value())
        remembered.setValue("captioning/exclude", self.exclude.text())

    def _pick_file(self) -> None:
        path = pick_file(self, "A WD14 tagger", "captioner", "ONNX model (*.onnx)")
        if path:
            self.model.setText(path)
            self.remember()

    def _pick_folder(self) -> None:
        path = pick_folder(self, "A captioning model folder (BLIP, GIT, Florence-2)",
                           "captioner")
        if path:
            self.model.setText(path)
            self.remember()

    def enable(self, idle: bool, running: bool) -> None:
        for widget in (self.preview_button, self.caption_button, self.model, self.mode):
            widget.setEnabled(idle)
        self.cancel.setEnabled(running)
