"""`lora-studio`: the desktop window. The GUI process never imports torch (see DESIGN.md).

One TrainConfig is edited by every section through the Binder; the sidebar switches sections;
the Presets menu loads built-in presets and TOML files; File > Open run shows a past run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QEvent, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QApplication, QHBoxLayout, QListWidget, QMainWindow,
                               QMessageBox, QStackedWidget, QVBoxLayout, QWidget)

from app.binding import Binder
from app.colours import refresh_tones, use_style
from app.file_dialogs import pick_folder
from app.demo_offer import DemoBanner, demo_available, demo_config, is_demo_config
from app.loss_plot import preload_in_background
from app.session import load_session, recent_files, save_session, settings
from app.settings_files import SettingsFiles, user_presets
from app.section_network import NetworkSection
from app.section_run import RunSection
from app.sections_setup import DatasetSection, ModelSection
from app.sections_training import ExportSection, SamplesSection, TrainingSection
from trainer.config import TrainConfig
from trainer.config_io import build_config, list_presets

SAVE_DELAY_MS = 500
SECTIONS = ("Dataset", "Base model", "Network", "Training", "Samples", "Run", "Export")


class MainWindow(QMainWindow):
    def __init__(self, config: TrainConfig | None = None, remember: bool = False) -> None:
        """`remember`: restore the last session (settings, runs folder, queue) and save it as
        it changes."""
        super().__init__()
        self.remember = remember
        not_restored = ""
        if remember and config is None:
            config, not_restored = load_session()
        first_start = remember and config is None and not not_restored  # offer the demo
        self.setWindowTitle("LoRA Studio")
        self.resize(1280, 740)
        self.setMinimumSize(900, 560)
        self.binder = Binder(config or TrainConfig(), self)
        self.dataset = DatasetSection(self.binder)
        self.model = ModelSection(self.binder)
        self.network = NetworkSection(self.binder)
        self.training = TrainingSection(self.binder)
        self.samples = SamplesSection(self.binder)
        self.run = RunSection(self.binder, self.start_problems, remember=remember)
        self.run.resume_requested.connect(lambda run_dir: self.resume_run(Path(run_dir)))
        self.run.queue_panel.open_requested.connect(lambda run_dir: self.open_run(Path(run_dir)))
        self.run.queue_panel.edit_requested.connect(self._edit_queued)
        self.run.state_changed.connect(self._show_run_state)
        self.export = ExportSection(self.binder)
        self.model.listeners.append(self.network.set_model_info)
        self.model.listeners.append(lambda info: self.run.update_buttons())
        self.network.set_model_info(self.model.info)
        self.run.monitor.gallery.cover_requested.connect(self._use_as_cover)
        self.run.monitor.saved.connect(lambda _: self._run_dir_changed())
        self.run.monitor.finished.connect(lambda _: self._run_dir_changed())
        self.pages = dict(zip(SECTIONS, (self.dataset, self.model, self.network, self.training,
                                         self.samples, self.run, self.export)))
        self.sidebar = QListWidget()
        self.sidebar.addItems(SECTIONS)
        self.sidebar.setFixedWidth(150)
        self.stack = QStackedWidget()
        for page in self.pages.values():
            self.stack.addWidget(page)
        self.sidebar.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.sidebar.setCurrentRow(0)
        self.demo_banner = DemoBanner()
        self.demo_banner.accepted.connect(self.try_demo)
        self.demo_banner.setVisible(first_start and demo_available())
        central = QWidget()
        outer = QVBoxLayout(central)
        outer.addWidget(self.demo_banner)
        layout = QHBoxLayout()
        layout.addWidget(self.sidebar)
        layout.addWidget(self.stack, 1)
        outer.addLayout(layout, 1)
        self.setCentralWidget(central)
        self.config_path: Path | None = None
        self._closing = False  # Quit was answered "Stop and save": the next Quit kills
        self.before_demo: TrainConfig | None = None  # the user's settings when the demo came
        self.files = SettingsFiles(self)
        self._build_menus()
        if remember:
            runs = settings().value("runs_folder", "")
            if runs:
                self.run.runs_folder.setText(str(runs))
        # The session is saved as it changes (atomically, a moment after the last edit), so a
        # force-quit or a crash loses nothing; closing saves it once more.
        self._save_later = QTimer(self)
        self._save_later.setSingleShot(True)
        self._save_later.setInterval(SAVE_DELAY_MS)
        self._save_later.timeout.connect(self.save_session_now)
        if remember:
            self.binder.changed.connect(lambda *_: self._save_later.start())
            self.run.runs_folder.textChanged.connect(lambda *_: self._save_later.start())
        self.statusBar().showMessage(not_restored or "Ready")
        self.binder.errors_changed.connect(self._show_error_count)

    # -- navigation ------------------------------------------------------------------------
    def show_section(self, name: str) -> QWidget:
        self.sidebar.setCurrentRow(SECTIONS.index(name))
        return self.pages[name]

    @property
    def config(self) -> TrainConfig:
        return self.binder.config

    def start_problems(self) -> list[str]:
        """Why Start is disabled (empty when training can start)."""
        problems = [f"{key}: {message}" for key, message in self.binder.errors.items()]
        config = self.binder.config
        if config.model.path is None:
            problems.append("pick a base model (Base model section)")
        elif not self.model.info.usable:
            problems.append(self.model.info.message)
        problems += self.network.problems()
        if not config.dataset.folders and config.dataset.kohya_config is None:
            problems.append("add a folder of images (Dataset section)")
        return problems

    def _show_error_count(self) -> None:
        count = len(self.binder.errors)
        self.statusBar().showMessage(f"{count} setting(s) need fixing" if count else "Ready")

    # -- menus -----------------------------------------------------------------------------
    def _build_menus(self) -> None:
        files = self.files
        file_menu = self.menuBar().addMenu("&File")
        self._action(file_menu, "New project", files.new_project, QKeySequence.New)
        self._action(file_menu, "Open settings...", files.ask_open, QKeySequence.Open)
        self._action(file_menu, "Save settings as...", files.ask_save, QKeySequence.SaveAs)
        self.recent_menu = file_menu.addMenu("Recent settings")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        file_menu.addSeparator()
        self._action(file_menu, "Open run folder...", self._ask_open_run, "Ctrl+R")
        file_menu.addSeparator()
        self._action(file_menu, "Quit", self.close, QKeySequence.Quit)
        edit = self.menuBar().addMenu("&Edit")
        self.undo_action = self._action(edit, "Undo", files.undo, QKeySequence.Undo)
        self.presets_menu = self.menuBar().addMenu("&Presets")
        self.fill_presets_menu()
        run_menu = self.menuBar().addMenu("&Run")
        self._action(run_menu, "Start", self.run.start, "Ctrl+Return")
        self._action(run_menu, "Pause / continue", self.run.toggle_pause, "Ctrl+P")
        self._action(run_menu, "Sample now", self.run.sample_now, "Ctrl+I")
        self._action(run_menu, "Stop and save", self.run.stop, "Ctrl+.")
        self._action(run_menu, "Add to queue", self.run.add_to_queue)
        self._action(run_menu, "Resume a stopped run...", self._ask_resume)
        help_menu = self.menuBar().addMenu("&Help")
        self._action(help_menu, "Try the demo", self.try_demo).setEnabled(demo_available())
        self.update_undo()

    def fill_presets_menu(self) -> None:
        """Built-in presets, then the user's saved ones (Save as preset adds to them)."""
        menu = self.presets_menu
        menu.clear()
        for name in list_presets():
            self._action(menu, name, lambda n=name: self.load_preset(n))
        mine = user_presets()
        if mine:
            menu.addSeparator()
            for path in mine:
                self._action(menu, path.stem, lambda p=path: self.load_preset(str(p)))
        menu.addSeparator()
        self._action(menu, "Load preset file...", self.files.ask_load_preset)
        self._action(menu, "Save as preset...", self.files.ask_save_preset)

    def update_undo(self) -> None:
        stack = self.files.undo_stack
        self.undo_action.setEnabled(bool(stack))
        self.undo_action.setText(f"Undo {stack[-1][0]}" if stack else "Undo")

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in recent_files():
            self._action(self.recent_menu, path, lambda p=path: self.load_config_file(Path(p)))
        if not self.recent_menu.actions():
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda *_: slot())
        menu.addAction(action)
        return action

    # -- presets and files -----------------------------------------------------------------
    def try_demo(self) -> None:
        """The demo's base model, images and settings; the Run section, ready to Start. The
        project from before the demo is what the session remembers (Edit > Undo brings it
        back), so the demo's 64 px settings never become the user's next project."""
        before = self.binder.config
        self.files.replace(demo_config(), "Demo")
        if not is_demo_config(before):
            self.before_demo = before
        self.demo_banner.hide()
        self.show_section("Run")
        self.statusBar().showMessage("Demo loaded: press Start. It trains in a few minutes on a "
                                     "CPU; the gallery shows each preview with and without the "
                                     "LoRA. Edit > Undo brings back your own settings.")

    @property
    def project_config(self) -> TrainConfig | None:
        """The settings the session remembers: the user's, never the demo's (then the ones
        from before the demo, or None: the session keeps what it had)."""
        if is_demo_config(self.binder.config):
            return self.before_demo
        return self.binder.config

    def load_preset(self, name_or_path: str) -> bool:
        return self.files.load_preset(name_or_path)

    def load_config_file(self, path: Path, remember: bool = True) -> bool:
        return self.files.load_file(path, remember=remember)

    def save_config_file(self, path: Path, only_changes: bool = False) -> Path:
        return self.files.save(path, only_changes=only_changes)

    @property
    def last_message(self):
        return self.files.last_message

    def _ask_open_run(self) -> None:
        path = pick_folder(self, "Open a run folder", "run", self.run.runs_folder.text())
        if path:
            self.open_run(Path(path))

    def open_run(self, run_dir: Path) -> None:
        self.run.open_run(run_dir)
        self.run.monitor.run_dir = str(run_dir)  # where it is now, not where it ran
        self._run_dir_changed()
        self.show_section("Run")

    def _ask_resume(self) -> None:
        path = pick_folder(self, "Resume which run folder?", "run", self.run.runs_folder.text())
        if path:
            self.resume_run(Path(path))

    def resume_run(self, run_dir: Path) -> bool:
        """Load the settings the run used (its config.toml), then continue it."""
        config_file = Path(run_dir) / "config.toml"
        if config_file.exists() and not self.load_config_file(config_file, remember=False):
            return False
        self.show_section("Run")
        return self.run.resume(Path(run_dir)) is not None

    def _edit_queued(self, spec) -> None:
        """A run taken out of the queue: its settings in the window, to change and re-add."""
        name = spec.config["output"]["name"]
        self.files.replace(build_config(spec.config), f"Queued run {name}")
        self.statusBar().showMessage(f"The settings of the queued run {name} are shown: change "
                                     "them, then Add to queue again (Edit > Undo brings back "
                                     "the settings from before).")

    def _show_run_state(self, state: str) -> None:
        """The status line follows the run (a 'Demo loaded: press Start' stayed all run)."""
        text = {"running": "Training: the Run section shows the progress.",
                "paused": "Paused: press Continue (Ctrl+P) to go on; Sample now still works.",
                "finished": "Training finished.", "failed": "Training stopped (see the Run "
                                                            "section)."}.get(state)
        if text:
            self.statusBar().showMessage(text)

    def _run_dir_changed(self) -> None:
        if self.run.monitor.run_dir:
            self.export.exporter.set_run_dir(self.run.monitor.run_dir)

    def _use_as_cover(self, sample) -> None:
        if self.run.monitor.run_dir and sample.file:
            path = str(Path(self.run.monitor.run_dir) / sample.file)
            self.binder.set_value("metadata", "cover_image", path)
            self.binder.load(self.binder.config)
            self.statusBar().showMessage(f"Cover image: {path}")

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.type() in (QEvent.PaletteChange, QEvent.ApplicationPaletteChange):
            # the system went light <-> dark
            refresh_tones(self)
        super().changeEvent(event)

    # -- closing ---------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if not getattr(self, "_preloading", None):
            self._preloading = preload_in_background()
        super().showEvent(event)

    def ask_close(self) -> str:
        """'stop' (stop and save, then close) or 'wait' (keep training, window stays)."""
        box = QMessageBox(self)
        box.setWindowTitle("Training is running")
        box.setText("Training is still running. Stop it and save the LoRA, or keep it running?")
        stop = box.addButton("Stop and save", QMessageBox.AcceptRole)
        box.addButton("Keep training", QMessageBox.RejectRole)
        box.exec()
        return "stop" if box.clickedButton() is stop else "wait"

    def save_session_now(self) -> None:
        """Remember the settings and the runs folder (a no-op for windows that don't)."""
        self._save_later.stop()
        if self.remember:
            if self.project_config is not None:
                save_session(self.project_config)
            settings().setValue("runs_folder", self.run.runs_folder.text())

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if self.run.running and not self._closing:
            event.ignore()
            if self.ask_close() == "stop":
                self._closing = True
                self.run.holding_queue = True  # the waiting runs stay queued for next time
                self.run.stop()
                self.statusBar().showMessage("Stopping: the window closes when the LoRA is "
                                             "saved. Quit again to close at once (the last "
                                             "checkpoint is kept).")
                self.run.state_changed.connect(lambda state: self.close() if state in
                                               ("finished", "failed") else None)
            return
        if self.run.running:  # Quit a second time while stopping: end the trainer now
            self.run.kill()
        self.dataset.health.stop()
        self.training.stop()
        self.export.compare.stop()
        self.dataset.caption_tools.stop()
        self.dataset.thumbnails.stop()
        self.save_session_now()
        event.accept()


def main(argv: list[str] | None = None) -> int:
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName("LoRA Studio")
    use_style(app)
    window = MainWindow(remember=True)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
