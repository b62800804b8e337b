"""The Dataset and Base model sections."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QHBoxLayout, QHeaderView, QLineEdit, QMenu,
                               QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QTabWidget,
                               QWidget)

from app.binding import Binder, combo, dspin, number_edit, spin
from app.caption_tools import CaptionTools
from app.colours import ERROR, NOTE, set_tone
from app.file_dialogs import pick_file, pick_folder
from app.forms import Folding, Page, plain_label
from app.health import HealthReport
from app.thumbnails import ThumbnailGrid
from app.model_info import (ModelDescription, describe_model, effective, follow_model,
                            native_resolution, prediction_text)
from trainer.config import DatasetFolder, bucket_range_for
from trainer.families import FAMILIES

RESOLUTION_HINT = ", ".join(
    f"{family.display_label(p)} {native_resolution(family.name, p)}"
    for family in FAMILIES.values() for p in ("epsilon", "v_prediction")
    if p == "epsilon" or family.version_for(p) != family.version_for("epsilon"))


class FolderTable(QTableWidget):
    """Image folders with their repeats (0 = take it from a kohya `N_name` folder name)."""

    def __init__(self) -> None:
        super().__init__(0, 4)
        self.setHorizontalHeaderLabels(["Image folder", "Images", "Repeats", "Masks"])
        self.setColumnHidden(3, True)  # shown while masked loss is on
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.verticalHeader().hide()
        self.setMinimumHeight(110)
        self.setMaximumHeight(200)
        self.on_change = lambda: None
        self.setAcceptDrops(True)
        # Per folder, from the health report's scan (the trainer's own count): usable
        # images, images seen per epoch, repeats of its subsets.
        self.counts: dict[str, dict] = {}
        self.mask_folders: dict[int, Path | None] = {}  # row -> its mask folder

    def set_counts(self, folders: dict[str, dict]) -> None:
        self.counts = dict(folders)
        for row in range(self.rowCount()):
            count = self.counts.get(self.item(row, 0).text())
            self.item(row, 1).setText("…" if count is None else str(count["images"]))
            repeats = count["repeats"] if count else []
            # 'auto' says what it means for this folder: 10 for `10_mychar`
            self.cellWidget(row, 2).setSpecialValueText(
                f"auto ({', '.join(map(str, repeats))})" if repeats else "auto")

    def folders(self) -> list[DatasetFolder]:
        """The rows as folders; what the table does not show (a folder's regularisation or
        validation role, class tokens, caption extension from a config file) is kept."""
        out = []
        for row in range(self.rowCount()):
            repeats = self.cellWidget(row, 2).value()
            folder = self.item(row, 0).data(Qt.UserRole)
            out.append(folder.model_copy(update={"repeats": repeats or None,
                                                 "mask_folder": self.mask_folders.get(row)}))
        return out

    def show_folders(self, folders: list[DatasetFolder]) -> None:
        self.setRowCount(0)
        self.mask_folders = {}
        for folder in folders:
            self.add_row(folder.path, folder.repeats or 0, notify=False, folder=folder)
        self.set_counts(self.counts)

    def add_row(self, path: Path, repeats: int = 0, notify: bool = True,
                folder: DatasetFolder | None = None) -> None:
        row = self.rowCount()
        self.insertRow(row)
        item = QTableWidgetItem(str(path))
        item.setData(Qt.UserRole, folder or DatasetFolder(path=Path(path)))
        item.setFlags(item.flags() & ~Qt.ItemIsEditable)
        item.setToolTip(str(path))
        self.setItem(row, 0, item)
        count = QTableWidgetItem("…")  # until the health report's scan counts it
        count.setFlags(count.flags() & ~Qt.ItemIsEditable)
        self.setItem(row, 1, count)
        box = QSpinBox()
        box.setRange(0, 10_000)
        box.setSpecialValueText("auto")
        box.setValue(repeats)
        box.setToolTip("How many times each image of this folder is seen per epoch. Raise it "
                       "for a folder with few images so it weighs as much as a bigger one "
                       "(typically 1-10). 'auto' reads it from a folder named like "
                       "'10_mystyle' (10), else 1.")
        box.valueChanged.connect(lambda *_: self.on_change())
        self.setCellWidget(row, 2, box)
        masks = QPushButton()
        masks.setToolTip("Masked loss: a folder with one mask per image, same name (white = "
                         "trained, black = ignored). Without one, an image's transparency is "
                         "its mask; an image with neither trains whole.")
        menu = QMenu(masks)
        menu.addAction("Choose a mask folder...", lambda button=masks: self._pick_masks(button))
        menu.addAction("No mask folder (each image's transparency)",
                       lambda button=masks: self._set_masks(button, None))
        masks.setMenu(menu)
        self.setCellWidget(row, 3, masks)
        self._show_masks(row, folder.mask_folder if folder else None)
        if notify:
            self.on_change()

    def _show_masks(self, row: int, mask_folder: Path | None) -> None:
        self.mask_folders[row] = Path(mask_folder) if mask_folder else None
        self.cellWidget(row, 3).setText(Path(mask_folder).name if mask_folder
                                        else "transparency...")

    def _row_of(self, button: QPushButton) -> int:
        return next(r for r in range(self.rowCount()) if self.cellWidget(r, 3) is button)

    def _pick_masks(self, button: QPushButton) -> None:
        row = self._row_of(button)
        path = pick_folder(self, "The mask folder of " + self.item(row, 0).text(), "masks")
        if path:  # cancelled: the folder stays as it was
            self._set_masks(button, Path(path))

    def _set_masks(self, button: QPushButton, mask_folder: Path | None) -> None:
        self._show_masks(self._row_of(button), mask_folder)
        self.on_change()

    def remove_selected(self) -> None:
        folders = self.folders()
        rows = {i.row() for i in self.selectedIndexes()}
        self.show_folders([f for row, f in enumerate(folders) if row not in rows])
        self.on_change()

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    dragMoveEvent = dragEnterEvent

    def dropEvent(self, event) -> None:  # noqa: N802
        for url in event.mimeData().urls():
            path = Path(url.toLocalFile())
            if path.is_dir():
                self.add_row(path)
        event.acceptProposedAction()


class DatasetSection(Page):
    def __init__(self, binder: Binder) -> None:
        super().__init__("Dataset", "The images to learn from. Each image may have a caption "
                                    "file with the same name (cat.png + cat.txt).")
        self.binder = binder
        self.table = FolderTable()
        folders = binder.field(self.table, "dataset", "folders",
                               "Folders of training images; drop folders here too.",
                               get=self.table.folders, put=self.table.show_folders)
        binding = binder.bindings[-1]
        self.table.on_change = lambda: binder.commit(binding)
        buttons = QWidget()
        row = QHBoxLayout(buttons)
        row.setContentsMargins(0, 0, 0, 0)
        add, remove = QPushButton("Add folder..."), QPushButton("Remove")
        add.clicked.connect(self._pick_folder)
        remove.clicked.connect(self.table.remove_selected)
        row.addWidget(add)
        row.addWidget(remove)
        row.addStretch()
        self.body.insertWidget(2, folders)
        self.body.insertWidget(3, buttons)
        self.calculator = plain_label()
        self.body.insertWidget(4, self.calculator)
        self.row("Caption file extension", binder.field(
            QLineEdit(), "dataset", "caption_extension",
            "The ending of caption files next to the images, like .txt or .caption."))
        self.row("Trigger word", binder.field(
            QLineEdit(), "dataset", "trigger_word",
            "A word put at the start of every caption; type it in your prompts to call the LoRA."))
        self.row("Resolution", binder.field(
            spin(64, 4096, 64, " px"), "dataset", "resolution",
            "Training image size (a multiple of 64): the base model's native size, "
            f"{RESOLUTION_HINT}. It follows the base model until you change it."))
        self.bucket_note = plain_label()  # says when the bucket range moved with the resolution
        self.bucket_note.setObjectName("dataset:bucket_note")
        set_tone(self.bucket_note, NOTE)
        self.row("", self.bucket_note)
        self.form.setRowVisible(self.bucket_note, False)
        self.row("Batch size", binder.field(
            spin(1, 1024), "dataset", "batch_size",
            "Images per step. Higher needs more memory."))
        self.row("Aspect-ratio buckets", binder.field(
            QCheckBox("keep each image's shape"), "dataset", "enable_bucket",
            "Group images of similar shape instead of cropping them all square, so a tall "
            "portrait stays tall. Leave it on unless every image is already square."))
        self.row("Masked loss", binder.field(
            QCheckBox("learn only the masked part of each image"), "dataset", "masked_loss",
            "Leave out of the loss what each image's mask marks black - a background, other "
            "characters. The mask is a same-name file in the folder's mask folder (the Masks "
            "column), else the image's transparency. The thumbnails shade what is left out."))
        self.row("Flip images", binder.field(
            QCheckBox("also learn mirrored copies"), "dataset", "flip_aug",
            "Mirror images at random. Don't use for text or asymmetric characters."))
        more = Folding("Advanced")
        more.row("Shuffle caption tags", binder.field(
            QCheckBox(), "dataset", "shuffle_caption",
            "Shuffle the comma-separated tags of each caption every time."))
        more.row("Keep first tags", binder.field(
            spin(0, 100), "dataset", "keep_tokens",
            "How many leading tags stay in place when shuffling."))
        more.row("Smallest bucket", binder.field(
            spin(64, 4096, 64, " px"), "dataset", "min_bucket_reso",
            "The shortest side an image group may have. Half the resolution is usual "
            "(256 px for 512); it must not be above the resolution."))
        more.row("Largest bucket", binder.field(
            spin(64, 8192, 64, " px"), "dataset", "max_bucket_reso",
            "The longest side an image group may have. Twice the resolution is usual "
            "(1024 px for 512); it must be at least the resolution."))
        more.row("Validation images", binder.field(
            dspin(0.0, 0.5, 0.05, 2), "dataset", "validation_split",
            "The share of each folder's images held out of training (0.1 = one in ten) to "
            "score a validation loss on: it falls while the LoRA learns what generalises and "
            "rises when it starts copying the training images, so Export can pick the best "
            "checkpoint. Each score costs one forward pass per held-out image."))
        every, access = number_edit(int, "at the start, each checkpoint and the end")
        more.row("Validation every", binder.field(
            every, "dataset", "validation_every_n_steps",
            "Also score the validation loss every this many steps.", **access))
        self.body.addWidget(more)
        binder.companions["dataset.resolution"] = lambda value: self._fit_buckets(
            value, self.binder.config.dataset.enable_bucket)
        binder.companions["dataset.enable_bucket"] = lambda value: self._fit_buckets(
            self.binder.config.dataset.resolution, value)
        self.health = HealthReport(binder)
        self.thumbnails = ThumbnailGrid(binder)
        self.caption_tools = CaptionTools(binder, self.thumbnails)
        self.caption_tools.changed.connect(self.health.check_soon)
        tabs = QTabWidget()
        tabs.addTab(self.thumbnails, "Images and captions")
        tabs.addTab(self.caption_tools, "Caption tools")
        tabs.addTab(self.health, "Health report")
        tabs.setMinimumHeight(320)
        self.tabs = tabs
        self.body.addWidget(tabs)
        binder.changed.connect(lambda key: self._update_calculator())
        binder.changed.connect(lambda key: key in ("*", "dataset.masked_loss") and
                               self._show_mask_column())
        self._show_mask_column()  # the config the section starts with (a restored session)
        binder.changed.connect(lambda key: key == "*" and self.form.setRowVisible(
            self.bucket_note, False))  # another file's or preset's sizes are its own
        self.figures: dict | None = None
        self.health.counted.connect(self._counted)
        self.thumbnails.caption_saved.connect(lambda _: self.health.check_soon())
        self._update_calculator()

    def _fit_buckets(self, resolution: object, buckets_on: object) -> dict[str, int]:
        """The bucket range that moves with a new resolution (or buckets switched on): when
        the range would not contain the resolution, most images would train at another
        size, so it becomes the usual range for that resolution, and the note says so."""
        dataset = self.binder.config.dataset
        if (not isinstance(resolution, int) or resolution % 64 or not buckets_on
                or dataset.min_bucket_reso <= resolution <= dataset.max_bucket_reso):
            return {}
        low, high = bucket_range_for(resolution)
        self.bucket_note.setText(
            f"Buckets moved from {dataset.min_bucket_reso}-{dataset.max_bucket_reso} px to "
            f"{low}-{high} px so they contain the resolution {resolution} px (Advanced).")
        self.form.setRowVisible(self.bucket_note, True)
        return {"min_bucket_reso": low, "max_bucket_reso": high}

    def _show_mask_column(self) -> None:
        self.table.setColumnHidden(3, not self.binder.config.dataset.masked_loss)

    def _pick_folder(self) -> None:
        path = pick_folder(self, "Add an image folder", "dataset")
        if path:
            self.table.add_row(Path(path))

    def _counted(self, figures: dict | None) -> None:
        self.figures = figures
        if figures is not None:
            self.table.set_counts(figures["folders"])
            self.thumbnails.mark_skipped(figures["skipped_files"])
        self._update_calculator()

    def _update_calculator(self) -> None:
        """Steps per epoch from the health report's scan: the trainer's count of usable
        images, repeats and buckets, so it agrees with the report and with training."""
        config = self.binder.config
        figures = self.figures
        if not config.dataset.folders and config.dataset.kohya_config is None:
            self.calculator.setText("Add a folder of images to see how many steps an epoch takes.")
            return
        if figures is None:
            self.calculator.setText("Counting the images..." if self.health.pending else
                                    "The images can't be counted: see the Health report tab.")
            return
        seen, batch, per_epoch = (figures["per_epoch"], figures["batch_size"],
                                  figures["steps_per_epoch"])
        steps, epochs = config.schedule.max_train_steps, config.schedule.max_train_epochs
        text = f"{seen} images seen per epoch, batch {batch}: {per_epoch} steps per epoch"
        if epochs and per_epoch:
            text += f"; × {epochs} epochs = {per_epoch * epochs} steps"
        elif per_epoch and steps:
            text += f"; {steps} steps ≈ {steps / per_epoch:.1f} epochs"
        self.calculator.setText(text)


class ModelSection(Page):
    """The base model: where it is, and what it is (family, prediction type and why, native
    size). Picking a model of another native size moves the training resolution along, unless
    the user set it (`app.model_info.follow_model` has the rule); the note under the facts
    says what moved."""

    def __init__(self, binder: Binder) -> None:
        super().__init__("Base model", "The Stable Diffusion model your LoRA is trained on top "
                                       "of: a diffusers folder or one .safetensors file.")
        self.binder = binder
        self.path = QLineEdit()
        self.path.setPlaceholderText("a diffusers folder or a .safetensors / .ckpt file")
        picker = QWidget()
        row = QHBoxLayout(picker)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(binder.field(
            self.path, "model", "path", "Where the base model is on your disk.",
            get=lambda: self.path.text().strip() or None,
            put=lambda v: self.path.setText("" if v is None else str(v))), 1)
        for text, slot in (("Folder...", self._pick_folder), ("File...", self._pick_file)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            row.addWidget(button, 0, Qt.AlignTop)
        self.row("Model", picker)
        self.detected = plain_label()
        self.row("Detected", self.detected)
        self.family = self._fact("Family", "model:family",
                                 "The Stable Diffusion family, read from the model's tensors "
                                 "(not its file name).")
        self.prediction = self._fact("Prediction type", "model:prediction",
                                     "What the model was trained to predict; training must match "
                                     "it. Change it under Advanced if the model card says otherwise.")
        self.native = self._fact("Native resolution", "model:native",
                                 "The image size the model was trained at; train at this "
                                 "resolution unless you have a reason not to.")
        self.follow_note = plain_label()
        self.follow_note.setObjectName("model:follow")
        set_tone(self.follow_note, NOTE)
        self.row("", self.follow_note)
        self.form.setRowVisible(self.follow_note, False)
        self.info = ModelDescription()
        self._native = 0
        self.listeners: list = []
        more = Folding("Advanced")
        more.row("Prediction type", binder.field(
            combo([("read from the model", "auto"), ("noise (epsilon)", "epsilon"),
                      ("v-prediction", "v_prediction")]), "model", "prediction_type",
            "What the model predicts; leave on 'read from the model' unless you know."))
        more.row("CLIP skip", binder.field(
            spin(1, 4), "model", "clip_skip",
            "Use an earlier text-encoder layer (2 for many anime models)."))
        self.body.addWidget(more)
        binder.changed.connect(self._maybe_inspect)
        self._inspect(follow=False)


    def _fact(self, label: str, name: str, tip: str):
        """One read-only row about the picked model."""
        widget = plain_label()
        widget.setObjectName(name)
        widget.setToolTip(tip)
        self.row(label, widget)
        return widget

    def _pick_folder(self) -> None:
        path = pick_folder(self, "Pick a diffusers model folder", "model")
        if path:
            self.set_path(path)

    def _pick_file(self) -> None:
        path = pick_file(self, "Pick a checkpoint file", "model",
                         "Checkpoints (*.safetensors *.ckpt)")
        if path:
            self.set_path(path)

    def set_path(self, path: str) -> None:
        self.path.setText(path)
        self.binder.commit(next(b for b in self.binder.bindings if b.key == "model.path"))

    def _maybe_inspect(self, key: str) -> None:
        if key in ("model.path", "model.prediction_type"):
            self._inspect(follow=True)
        elif key == "*":  # a loaded file or preset: its sizes are its own, nothing moves
            self._inspect(follow=False)

    def _inspect(self, follow: bool) -> None:
        # The last native size known: a path typed letter by letter passes through paths that
        # are no model (native 0) on its way from one model to the next.
        previous = self._native
        config = self.binder.config
        self.info = effective(describe_model(config.model.path), config.model.prediction_type)
        info = self.info
        self._native = info.native_resolution or self._native
        self.detected.setText(info.message)
        unusable = not info.usable and config.model.path is not None
        set_tone(self.detected, ERROR if unusable else None)
        known = bool(info.family)
        for label in (self.family, self.prediction, self.native):
            self.form.setRowVisible(label, known)
        if known:
            self.family.setText(info.label)
            self.prediction.setText(prediction_text(info))
            self.native.setText(f"{info.native_resolution} × {info.native_resolution} px")
        notes = []
        if follow:
            moved = follow_model(config, previous, info.native_resolution, info.label)
            for key, value in moved.changes.items():
                section, name = key.split(".")
                self.binder.set_and_show(section, name, value)
            notes = moved.notes
        self.follow_note.setText("\n".join(notes))
        self.form.setRowVisible(self.follow_note, bool(notes))
        for listener in self.listeners:
            listener(info)
