"""Issue 14, lost work and dead ends: a runs folder that can't be made, a restored session,
presets that keep the project, the demo's sizes, and Quit that always quits."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.main import MainWindow
from app.session import CONFIG_DIR_ENV, session_file
from synthetic import make_shapes_dataset
from test_gui_run import FakeJob, ready_window  # noqa: F401 - a fixture
from trainer.config_io import ConfigError, build_config
from trainer.events import Started
from trainer.job_spec import JobSpec


@pytest.fixture(autouse=True)
def private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "settings"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    return folder


# -- 1. a runs folder that can't be made ---------------------------------------------------
@pytest.mark.parametrize("where", ["is a file", "under a file", "not writable"])
def test_a_runs_folder_that_cannot_be_made_disables_start_with_the_reason(
        qtbot, ready_window, tmp_path: Path, monkeypatch, where: str) -> None:
    window = ready_window
    assert window.run.start_button.isEnabled(), window.run.reason.text()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    folder = {"is a file": blocker, "under a file": blocker / "runs",
              "not writable": tmp_path / "locked" / "runs"}[where]
    if where == "not writable":
        (tmp_path / "locked").mkdir()
        # root may write anywhere, so the permission test asks os.access as a user would get it
        real_access = os.access
        monkeypatch.setattr("trainer.runs.os.access", lambda path, mode: False if
                            Path(path) == tmp_path / "locked" else real_access(path, mode))
    window.run.runs_folder.setText(str(folder))
    assert not window.run.start_button.isEnabled()
    reason = window.run.reason.text()
    assert reason.startswith("Can't start yet: the runs folder") and str(folder) in reason
    assert {"is a file": "is a file", "under a file": "is a file",
            "not writable": "can't be written"}[where] in reason
    assert window.run.start() is None and not FakeJob.instances
    window.run.runs_folder.setText(str(tmp_path / "fine" / "runs"))
    assert window.run.start_button.isEnabled()
    assert blocker.read_text() == "a file"


def test_a_child_that_cannot_make_its_folder_ends_the_run_in_words(qtbot, ready_window,
                                                                   tmp_path: Path) -> None:
    """The real child, started past the check (the folder vanished under a file meanwhile):
    the Run page says why instead of 'Starting the trainer ...' forever."""
    window = ready_window
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    from trainer.jobs import Job

    window.run.job_factory = Job
    job = window.run.start(JobSpec.from_config(window.config, blocker / "run-1"))
    qtbot.waitUntil(lambda: job.done, timeout=30_000)
    assert job.state == "failed" and not window.run.running
    status = window.run.monitor.status.text()
    assert "can't create the run folder" in status and str(blocker / "run-1") in status
    assert window.run.start_button.isEnabled()


def test_quit_while_stopping_quits_at_once(qtbot, ready_window, monkeypatch) -> None:
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("r", 100)])
    window.show()
    job = window.run.start()
    window.ask_close = lambda: "stop"
    window.close()  # asks; the run is told to stop, the window waits for the LoRA
    assert window.isVisible() and job.sent == ["stop"] and window.run.running
    window.close()  # the trainer does not answer: a second Quit ends it and closes
    assert not window.isVisible() and job.state == "failed"


def test_the_session_is_saved_as_it_changes(qtbot, tmp_path: Path) -> None:
    window = MainWindow(remember=True)
    qtbot.addWidget(window)
    window.binder.set_value("network", "rank", 48)
    window.run.runs_folder.setText(str(tmp_path / "my-runs"))
    qtbot.waitUntil(lambda: session_file().exists() and tomllib.loads(
        session_file().read_text())["network"]["rank"] == 48, timeout=3000)
    # a force-quit now (no closeEvent) loses nothing
    again = MainWindow(remember=True)
    qtbot.addWidget(again)
    assert again.config.network.rank == 48
    assert again.run.runs_folder.text() == str(tmp_path / "my-runs")


# -- 2. a restored session lists its dataset -------------------------------------------------
def test_a_restored_session_lists_counts_and_checks_its_dataset(qtbot, tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_shapes_dataset(images, 5)
    first = MainWindow(remember=True)
    qtbot.addWidget(first)
    first.dataset.table.add_row(images)
    first.close()
    again = MainWindow(remember=True)
    qtbot.addWidget(again)
    assert [f.path for f in again.config.dataset.folders] == [images]
    qtbot.waitUntil(lambda: len(again.dataset.thumbnails.paths) == 5, timeout=10_000)
    qtbot.waitUntil(lambda: "5 images seen per epoch" in again.dataset.calculator.text(),
                    timeout=10_000)
    qtbot.waitUntil(lambda: again.dataset.health.summary.text().startswith("Images used: 5"),
                    timeout=30_000)


# -- 3. presets keep the project -----------------------------------------------------------
def test_a_preset_changes_the_recipe_and_keeps_the_project(qtbot, ready_window,
                                                           tmp_path: Path) -> None:
    window = ready_window
    window.binder.set_value("metadata", "title", "My character")
    window.binder.set_value("output", "name", "mychar")
    window.binder.set_value("sampling", "prompts", ["mychar smiling"])
    folders, model = window.config.dataset.folders, window.config.model.path
    assert window.load_preset("tiny-cpu")
    config = window.config
    assert config.network.rank == 4 and config.dataset.resolution == 64  # the recipe
    assert config.dataset.folders == folders and config.model.path == model  # the project
    assert config.metadata.title == "My character" and config.output.name == "mychar"
    assert config.sampling.prompts == ["mychar smiling"]
    assert window.dataset.table.rowCount() == 1 and window.model.path.text() == str(model)
    message = window.statusBar().currentMessage()
    assert message == ("Preset tiny-cpu: 14 setting(s) changed (resolution, min bucket reso, "
                       "max bucket reso and 11 more). Edit > Undo brings back the earlier settings.")
    assert "network.rank: 16 -> 4" in window.statusBar().toolTip().splitlines()
    assert window.undo_action.isEnabled() and window.undo_action.text() == "Undo Preset tiny-cpu"
    window.undo_action.trigger()
    assert window.config.network.rank == 16 and window.binder.widget("network.rank").value() == 16
    assert window.config.metadata.title == "My character"
    assert not window.undo_action.isEnabled()


def test_new_project_starts_clean_and_can_be_undone(qtbot, ready_window) -> None:
    window = ready_window
    window.files.new_project()
    assert window.config.dataset.folders == [] and window.config.model.path is None
    assert window.dataset.table.rowCount() == 0 and not window.run.start_button.isEnabled()
    window.files.undo()
    assert window.dataset.table.rowCount() == 1 and window.run.start_button.isEnabled()


# -- 4. the demo's sizes, and a bucket range that must contain the resolution ---------------
def test_the_bucket_range_moves_with_the_resolution_visibly(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.try_demo()
    dataset = window.config.dataset
    assert (dataset.resolution, dataset.min_bucket_reso, dataset.max_bucket_reso) == (64, 64, 64)
    window.binder.widget("dataset.resolution").setValue(512)
    assert (dataset.resolution, dataset.min_bucket_reso, dataset.max_bucket_reso) == (512, 256, 1024)
    assert window.binder.widget("dataset.max_bucket_reso").value() == 1024
    note = window.dataset.bucket_note
    assert note.isVisibleTo(window.dataset) and "64-64 px to 256-1024 px" in note.text()
    assert not window.binder.errors
    # the user narrowing the range below the resolution is refused in words, not adjusted
    assert not window.binder.set_value("dataset", "max_bucket_reso", 256)
    assert "does not contain the resolution 512" in window.binder.errors["dataset.max_bucket_reso"]
    assert dataset.max_bucket_reso == 1024


def test_the_trainer_refuses_a_bucket_range_without_the_resolution() -> None:
    with pytest.raises(ConfigError, match=r"dataset: the bucket range 64-64 px does not contain "
                                          r"the resolution 512 px.*256 and 1024"):
        build_config({"dataset": {"resolution": 512, "min_bucket_reso": 64,
                                  "max_bucket_reso": 64}})
    assert build_config({"dataset": {"resolution": 512, "min_bucket_reso": 64,
                                     "max_bucket_reso": 64, "enable_bucket": False}})


def test_the_demo_does_not_become_the_next_project(qtbot, tmp_path: Path) -> None:
    first = MainWindow(remember=True)
    qtbot.addWidget(first)
    first.binder.set_value("network", "rank", 24)  # the user's own project, before the demo
    qtbot.mouseClick(first.demo_banner.try_button, Qt.LeftButton)
    assert first.config.dataset.resolution == 64
    first.close()
    again = MainWindow(remember=True)
    qtbot.addWidget(again)
    assert again.demo_banner.isHidden()  # not a first start any more
    assert again.config.network.rank == 24 and again.config.dataset.resolution == 512
    assert again.config.model.path is None and again.config.output.name == "my_lora"


def test_a_failed_start_in_the_window_leaves_no_run_folder(qtbot, ready_window,
                                                           tmp_path: Path) -> None:
    """#14 item 7: a run that failed before training left an empty run folder behind."""
    from trainer.jobs import Job

    window = ready_window
    empty = tmp_path / "no-images"
    empty.mkdir()
    window.binder.set_value("dataset", "folders", [{"path": empty}])
    window.run.job_factory = Job
    job = window.run.start()
    run_dir = Path(job.spec.run_dir)
    qtbot.waitUntil(lambda: job.done, timeout=60_000)
    assert job.state == "failed" and "Health report tab" in window.run.monitor.status.text()
    qtbot.waitUntil(lambda: job.released, timeout=15_000)
    assert not run_dir.exists() and run_dir.parent.is_dir()
