"""The window as a whole: session memory, recent files, the queue, closing while training."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.main import MainWindow
from app.session import CONFIG_DIR_ENV, recent_files
from test_gui_run import FakeJob, ready_window  # noqa: F401 - a fixture
from trainer.events import Finished, Started


@pytest.fixture(autouse=True)
def private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "settings"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    return folder


def test_last_session_is_restored_and_recent_files_listed(qtbot, tmp_path: Path) -> None:
    first = MainWindow(remember=True)
    qtbot.addWidget(first)
    first.binder.set_value("network", "rank", 48)
    first.run.runs_folder.setText(str(tmp_path / "my-runs"))
    saved = tmp_path / "mine.toml"
    first.save_config_file(saved)
    first.close()
    again = MainWindow(remember=True)
    qtbot.addWidget(again)
    assert again.config.network.rank == 48
    assert again.binder.widget("network.rank").value() == 48
    assert again.run.runs_folder.text() == str(tmp_path / "my-runs")
    assert recent_files() == [str(saved)]
    again._fill_recent()
    assert [a.text() for a in again.recent_menu.actions()] == [str(saved)]
    fresh = MainWindow()  # tests and scripts: defaults, nothing remembered
    qtbot.addWidget(fresh)
    assert fresh.config.network.rank == 16


def test_a_broken_session_file_is_ignored(qtbot, private_settings: Path) -> None:
    private_settings.mkdir(parents=True)
    (private_settings / "last-session.toml").write_text("[network]\nrank = -3\n")
    window = MainWindow(remember=True)
    qtbot.addWidget(window)
    assert window.config.network.rank == 16
    # not lost: moved aside (the next save would overwrite it) and the status line says where
    kept = private_settings / "last-session.unreadable.toml"
    assert kept.read_text() == "[network]\nrank = -3\n"
    message = window.statusBar().currentMessage()
    assert "could not be restored" in message and str(kept) in message and "network.rank" in message


def test_queued_settings_run_after_the_current_run(qtbot, ready_window) -> None:
    window = ready_window
    scripts = [[Started("a", 5)], [Started("b", 5), Finished("b.safetensors", 5)]]
    window.run.job_factory = lambda spec: FakeJob(spec, scripts.pop(0))
    qtbot.mouseClick(window.run.queue_button, Qt.LeftButton)  # idle: starts at once
    first = FakeJob.instances[-1]
    window.binder.set_value("network", "rank", 8)
    qtbot.mouseClick(window.run.queue_button, Qt.LeftButton)  # running: waits
    assert len(window.run.queue) == 1
    assert window.run.queue_panel.title.text() == "Waiting: 1 run(s)"
    first.pending = [Finished("a.safetensors", 5)]
    qtbot.waitUntil(lambda: len(FakeJob.instances) == 2, timeout=3000)
    second = FakeJob.instances[-1]
    assert first.spec.config["network"]["rank"] == 16 and second.spec.config["network"]["rank"] == 8
    assert second.spec.run_dir != first.spec.run_dir
    qtbot.waitUntil(lambda: second.done, timeout=3000)
    assert not window.run.queue


@pytest.mark.parametrize("answer", ["stop", "wait"])
def test_closing_while_training_asks(qtbot, ready_window, monkeypatch, answer: str) -> None:
    window = ready_window
    window.run.job_factory = lambda spec: FakeJob(spec, [Started("x", 100)])
    window.show()
    window.run.start()
    job = FakeJob.instances[-1]
    monkeypatch.setattr(window, "ask_close", lambda: answer)
    window.close()
    assert window.isVisible()  # never closes under a running job
    assert job.sent == (["stop"] if answer == "stop" else [])
    job.pending = [Finished("x.safetensors", 100)]
    qtbot.waitUntil(lambda: job.done, timeout=3000)
    qtbot.wait(50)
    assert window.isVisible() == (answer == "wait")


def test_a_bad_settings_file_is_refused_in_plain_words(qtbot, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nrnak = 4\n[output]\nname = "<b>bold</b>"\n')
    window = MainWindow()
    qtbot.addWidget(window)
    assert not window.load_config_file(bad)
    box = window.last_message
    assert box.textFormat() == Qt.PlainText
    assert "rnak" in box.text() and "rank" in box.text()
    assert window.config.network.rank == 16  # nothing half-loaded
    box.close()


def test_the_window_fits_a_1366x768_laptop(qtbot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(1366, 700)
    window.show()
    for name in ("Dataset", "Network", "Run", "Export"):
        window.show_section(name)
        hint = window.minimumSizeHint()
        assert hint.width() <= 1366 and hint.height() <= 700, (name, hint)
    assert window.size().width() <= 1366 and window.size().height() <= 700


def test_qt_calls_keep_pythons_reference_counts(qtbot) -> None:
    """PySide6 6.12.0 dropped a reference to True on every Python signal emit and to None on
    every void call: the interpreter aborted once either count reached 0 (about 3,700 emits
    after the window opened). Each call must leave the counts as they were."""
    import sys

    window = MainWindow()
    qtbot.addWidget(window)
    rank = window.binder.widget("network.rank")
    before = sys.getrefcount(True), sys.getrefcount(None)
    for value in range(2, 202):
        window.binder.changed.emit("network.rank")  # a Python-side emit
        rank.blockSignals(True)
        rank.setValue(value)  # a void call into Qt
        rank.blockSignals(False)
    assert (sys.getrefcount(True), sys.getrefcount(None)) == before


def test_first_start_offers_the_demo_and_it_fills_in_a_startable_config(qtbot) -> None:
    from trainer.demo import DEMO_BASE, DEMO_DATASET

    first = MainWindow(remember=True)  # an empty settings folder: a first start
    qtbot.addWidget(first)
    assert not first.demo_banner.isHidden()
    qtbot.mouseClick(first.demo_banner.try_button, Qt.LeftButton)
    assert first.demo_banner.isHidden()
    assert first.config.model.path == DEMO_BASE
    assert [f.path for f in first.config.dataset.folders] == [DEMO_DATASET]
    assert first.config.dataset.resolution == 64 and first.config.output.name == "demo_style"
    assert first.binder.widget("network.rank").value() == first.config.network.rank == 8
    assert first.stack.currentWidget() is first.run
    assert first.start_problems() == []  # the shipped base is detected as usable SD 1.x
    first.close()
    again = MainWindow(remember=True)  # a session was saved: no offer the second time
    qtbot.addWidget(again)
    assert again.demo_banner.isHidden()
