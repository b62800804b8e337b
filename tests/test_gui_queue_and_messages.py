"""Issue 14: the visible queue (item 16) and the things that misled (items 6, 7, 10, 11, 14,
15, and library notices in the Log tab)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.main import MainWindow
from app.session import CONFIG_DIR_ENV
from test_gui_run import FakeJob, ready_window  # noqa: F401 - a fixture
from trainer.events import LIBRARY, Failed, Finished, Log, Progress, Started


@pytest.fixture(autouse=True)
def private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "settings"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    return folder


def _lines(widget) -> list[str]:
    return [widget.item(row).text() for row in range(widget.count())]


# -- 16. the queue panel -------------------------------------------------------------------
def test_the_queue_panel_lists_reorders_removes_and_edits_waiting_runs(qtbot, ready_window) -> None:
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("a", 100)])
    panel = window.run.queue_panel
    assert panel.isHidden()  # nothing waiting, nothing ended: no panel
    window.run.start()
    for name, steps in (("second", 200), ("third", 300), ("fourth", 400)):
        window.binder.set_value("output", "name", name)
        window.binder.set_value("schedule", "max_train_steps", steps)
        window.run.add_to_queue()
    assert not panel.isHidden() and panel.title.text() == "Waiting: 3 run(s)"
    assert _lines(panel.waiting) == ["second · model · 200 steps", "third · model · 300 steps",
                                     "fourth · model · 400 steps"]
    panel.waiting.setCurrentRow(2)
    qtbot.mouseClick(panel.up, Qt.LeftButton)
    assert [s.config["output"]["name"] for s in window.run.queue] == ["second", "fourth", "third"]
    panel.waiting.setCurrentRow(0)
    qtbot.mouseClick(panel.remove, Qt.LeftButton)
    assert [s.config["output"]["name"] for s in window.run.queue] == ["fourth", "third"]
    panel.waiting.setCurrentRow(1)
    qtbot.mouseClick(panel.edit, Qt.LeftButton)  # back into the settings, out of the queue
    assert window.config.output.name == "third" and window.config.schedule.max_train_steps == 300
    assert [s.config["output"]["name"] for s in window.run.queue] == ["fourth"]


def test_an_ended_run_stays_reachable_when_the_next_starts(qtbot, ready_window,
                                                           tmp_path: Path) -> None:
    window = ready_window
    first_dir = tmp_path / "runs" / "first"
    scripts = [[Started(str(first_dir), 5), Finished(str(first_dir / "first.safetensors"), 5)],
               [Started("b", 5)]]
    window.run.job_factory = lambda spec: FakeJob(spec, scripts.pop(0))
    window.binder.set_value("output", "name", "first")
    window.run.start()
    window.binder.set_value("output", "name", "second")
    window.run.add_to_queue()
    qtbot.waitUntil(lambda: len(FakeJob.instances) == 2, timeout=3000)
    panel = window.run.queue_panel
    assert _lines(panel.finished) == ["first: finished"]
    assert panel.finished.item(0).toolTip().endswith(f"LoRA file: {first_dir / 'first.safetensors'}")
    assert panel.finished.item(0).data(Qt.UserRole) == FakeJob.instances[0].spec.run_dir
    opened = []
    panel.open_url = lambda url: opened.append(url.toLocalFile())
    qtbot.mouseClick(panel.show_folder, Qt.LeftButton)
    assert opened == [FakeJob.instances[0].spec.run_dir]


def test_the_queue_survives_a_restart(qtbot, ready_window, private_settings: Path) -> None:
    window = MainWindow(remember=True)
    qtbot.addWidget(window)
    window.ask_close = lambda: "wait"  # the test ends mid-run: no modal question
    source = ready_window  # a startable config, copied into the remembering window
    window.binder.load(source.config)
    window.run.runs_folder.setText(source.run.runs_folder.text())
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("a", 100)])
    window.run.start()
    window.binder.set_value("output", "name", "later")
    window.run.add_to_queue()
    saved = json.loads((private_settings / "queue.json").read_text())
    assert [entry["config"]["output"]["name"] for entry in saved] == ["later"]
    again = MainWindow(remember=True)  # the window was closed (or killed) meanwhile
    qtbot.addWidget(again)
    again.ask_close = lambda: "wait"
    assert [s.config["output"]["name"] for s in again.run.queue] == ["later"]
    panel = again.run.queue_panel  # listed at once, and manageable (it was an empty list)
    assert _lines(panel.waiting) == ["later · model · 1000 steps"] and panel.remove.isEnabled()
    assert again.run.run_queue_button.isVisibleTo(again.run)
    again.run.job_factory = lambda spec: FakeJob(spec, [Started("b", 100)])
    job = again.run.start_queue()
    assert job.spec.config["output"]["name"] == "later" and not again.run.queue


def test_closing_while_training_never_starts_the_next_queued_run(qtbot, ready_window,
                                                                 private_settings: Path) -> None:
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("a", 100)])
    window.run.start()
    window.binder.set_value("output", "name", "later")
    window.run.add_to_queue()
    window.show()
    window.ask_close = lambda: "stop"
    window.close()  # stop and save, then close
    first = FakeJob.instances[-1]
    first.pending = [Finished("a.safetensors", 40)]
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=3000)
    qtbot.wait(300)
    assert len(FakeJob.instances) == 1  # nothing started behind the closed window
    assert [s.config["output"]["name"] for s in window.run.queue] == ["later"]


def test_editing_a_queued_demo_run_does_not_make_the_demo_the_project(
        qtbot, private_settings: Path, tmp_path: Path) -> None:
    window = MainWindow(remember=True)
    qtbot.addWidget(window)
    window.ask_close = lambda: "wait"
    window.binder.set_value("network", "rank", 24)  # the user's project
    window.try_demo()
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("d", 100)])
    window.run.runs_folder.setText(str(tmp_path / "runs"))
    window.run.start()
    window.run.add_to_queue()
    window.run.queue_panel.waiting.setCurrentRow(0)
    window.run.queue_panel.edit_current()  # the demo's settings, back from the queue
    window.save_session_now()
    again = MainWindow(remember=True)
    qtbot.addWidget(again)
    assert again.config.network.rank == 24 and again.config.dataset.resolution == 512


# -- 6. paused ------------------------------------------------------------------------------
def test_pause_is_shown_and_sample_now_is_sent_while_paused(qtbot, ready_window) -> None:
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("x", 100),
                                                         Progress(12, 100, 1, 3.0, 29.0)])
    window.run.start()
    job = FakeJob.instances[-1]
    qtbot.waitUntil(lambda: window.run.monitor.step == 12, timeout=3000)
    window.run.toggle_pause()
    assert window.run.monitor.progress.format() == "step 12 / 100 · paused"
    assert window.statusBar().currentMessage().startswith("Paused")
    window.run.sample_now()
    assert job.sent == ["pause", "sample_now"]


# -- 7. hints in the window's words ----------------------------------------------------------
@pytest.mark.parametrize("checkpoint", [False, True])
def test_a_crash_hint_points_to_the_window_and_offers_resume_only_with_a_checkpoint(
        qtbot, ready_window, tmp_path: Path, checkpoint: bool) -> None:
    window = ready_window
    run_dir = tmp_path / "runs" / "crashed"
    if checkpoint:
        (run_dir / "checkpoints" / "step-000040").mkdir(parents=True)
        (run_dir / "checkpoints" / "step-000040" / "state.json").write_text("{}")
    window.run.job_factory = lambda spec: FakeJob(spec, [
        Started(str(run_dir), 100), Failed("crashed", "the trainer process was killed",
                                           hint="resume with --resume RUN_DIR")])
    window.run.start()
    qtbot.waitUntil(lambda: not window.run.running, timeout=3000)
    status = window.run.monitor.status.text()
    assert "--resume" not in status
    if checkpoint:
        assert "Run > Resume continues from the checkpoint at step 40" in status
        assert window.run.resume_button.isVisibleTo(window.run)
    else:
        assert "No checkpoint was saved, so Start begins again" in status and "Resume" not in status
        assert not window.run.resume_button.isVisibleTo(window.run)


def test_a_trainer_that_dies_before_training_is_not_blamed_on_memory(qtbot, ready_window) -> None:
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, [
        Failed("crashed", "the trainer stopped responding for 30 s and was ended")])
    window.run.start()
    qtbot.waitUntil(lambda: not window.run.running, timeout=3000)
    status = window.run.monitor.status.text()
    assert "ended before training began" in status and "batch size" not in status


def test_a_dataset_failure_points_to_the_health_report(qtbot, ready_window) -> None:
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, [
        Failed("dataset", "no usable images in x", hint="run `lora-train validate`")])
    window.run.start()
    qtbot.waitUntil(lambda: not window.run.running, timeout=3000)
    status = window.run.monitor.status.text()
    assert "Health report tab" in status and "lora-train" not in status


# -- 10, 11. settings files and presets -----------------------------------------------------
def test_a_settings_file_that_is_not_text_gets_a_dialog(qtbot, tmp_path: Path) -> None:
    bad = tmp_path / "photo.toml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    window = MainWindow()
    qtbot.addWidget(window)
    assert not window.load_config_file(bad)
    assert "not a text file" in window.last_message.text() and str(bad) in window.last_message.text()


def test_a_settings_file_naming_missing_paths_says_which(qtbot, tmp_path: Path) -> None:
    settings_file = tmp_path / "from-another-pc.toml"
    settings_file.write_text('[model]\npath = "/nowhere/model.safetensors"\n'
                             '[[dataset.folders]]\npath = "/nowhere/images"\n')
    window = MainWindow()
    qtbot.addWidget(window)
    assert window.load_config_file(settings_file)
    text = window.last_message.text()
    assert "base model: /nowhere/model.safetensors" in text and "image folder: /nowhere/images" in text


def test_save_as_preset_adds_toml_and_lists_it_in_the_presets_menu(qtbot, tmp_path: Path) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.binder.set_value("network", "rank", 40)
    window.binder.set_value("metadata", "title", "My own character")
    saved = window.files.save_preset("mypreset")
    assert saved.name == "mypreset.toml" and saved.exists()
    text = saved.read_text()  # a recipe: the project's title stays out of it
    assert "rank = 40" in text and "My own character" not in text and "[metadata]" not in text
    names = [action.text() for action in window.presets_menu.actions()]
    assert "mypreset" in names
    window.binder.set_value("network", "rank", 8)
    next(a for a in window.presets_menu.actions() if a.text() == "mypreset").trigger()
    assert window.config.network.rank == 40


# -- 14. the status line follows the run ----------------------------------------------------
def test_the_status_line_does_not_keep_saying_demo_loaded(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.ask_close = lambda: "wait"
    window.try_demo()
    assert window.statusBar().currentMessage().startswith("Demo loaded")
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("d", 100)])
    window.run.start()
    assert window.statusBar().currentMessage().startswith("Training")


# -- 15. the base model is checked when it is chosen ----------------------------------------
def test_a_bogus_ckpt_is_refused_when_picked(qtbot, tmp_path: Path) -> None:
    bogus = tmp_path / "model.ckpt"
    bogus.write_bytes(b"<html>404 not found</html>" * 20)
    window = MainWindow()
    qtbot.addWidget(window)
    window.model.set_path(str(bogus))
    assert "model.ckpt is not a PyTorch checkpoint" in window.model.detected.text()
    assert any("not a PyTorch checkpoint" in p for p in window.start_problems())


# -- also expected: library notices stay out of the Log tab's default view -------------------
def test_library_notices_are_hidden_from_the_log_by_default(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    monitor = window.run.monitor
    monitor.feed([Log("info", "started"), Log(LIBRARY, "stderr: torchvision notice"),
                  Log("warning", "skipped a.png")])
    assert monitor.log.toPlainText() == "started\n[warning] skipped a.png"
    monitor.note("> pause")  # the window's own lines survive the view being rebuilt
    monitor.show_library.setChecked(True)
    assert "[library] stderr: torchvision notice" in monitor.log.toPlainText()
    monitor.show_library.setChecked(False)
    assert monitor.log.toPlainText() == "started\n[warning] skipped a.png\n> pause"


# -- also expected: file dialogs start in the last folder used for that kind of file --------
def test_file_dialogs_start_where_that_kind_of_file_was_last_picked(qtbot, tmp_path: Path,
                                                                    monkeypatch) -> None:
    from PySide6.QtWidgets import QFileDialog

    models = tmp_path / "models"
    (models / "sd15").mkdir(parents=True)
    (tmp_path / "datasets" / "cats").mkdir(parents=True)
    asked: list[tuple[str, str]] = []
    answers = iter([str(models / "sd15"), str(tmp_path / "datasets" / "cats"), "", ""])

    def folder_dialog(parent, title, start=""):
        asked.append((title, start))
        return next(answers)

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", folder_dialog)
    window = MainWindow()
    qtbot.addWidget(window)
    window.model._pick_folder()
    window.dataset._pick_folder()
    window.model._pick_folder()    # a model again: where the last model was, not the dataset
    window.dataset._pick_folder()
    assert [start for _, start in asked] == ["", "", str(models), str(tmp_path / "datasets")]
