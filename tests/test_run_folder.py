"""A run folder is claimed: one training in it at a time, never a folder of other files (#15)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config_io import ConfigError
from trainer.run_folder import LOCK_NAME, claim_run_folder, release_run_folder


def test_a_folder_of_other_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.toml").write_text("my own settings\n")
    with pytest.raises(ConfigError, match=r"holds files that are not a LoRA Studio run "
                                          r"\(config.toml\)"):
        claim_run_folder(folder, new_run=True)
    assert (folder / "config.toml").read_text() == "my own settings\n"
    assert not (folder / LOCK_NAME).exists()


def test_a_run_to_resume_is_refused_for_a_new_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    with pytest.raises(ConfigError, match="holds a run that saved no checkpoint"):
        claim_run_folder(run, new_run=True)  # --resume would have nothing to resume from
    (run / "checkpoints" / "step-000002").mkdir()
    (run / "checkpoints" / "step-000002" / "state.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"already holds a run; continue it with --resume {run}"):
        claim_run_folder(run, new_run=True)
    assert claim_run_folder(run, new_run=False)  # a resume may
    release_run_folder(run)


def test_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / LOCK_NAME).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(ConfigError, match=f"in use by another training \\(process {other.pid}\\)"):
            claim_run_folder(run, new_run=False)
    finally:
        other.kill()
        other.wait()
    # its process is gone: the lock is stale, and the folder is ours
    assert claim_run_folder(run, new_run=False)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] != other.pid
    assert not claim_run_folder(run, new_run=False)  # held by us already: no second claim
    release_run_folder(run)
    assert not (run / LOCK_NAME).exists()


def test_the_cli_refuses_to_train_into_a_folder_of_other_files(tiny_model, tmp_path: Path,
                                                              capsys) -> None:
    from synthetic import make_shapes_dataset
    from trainer.cli import main as cli

    images = tmp_path / "images"
    make_shapes_dataset(images, 2)
    out = tmp_path / "my-project"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = cli(["train", "--preset", "tiny-cpu", "--model", str(tiny_model[0]), "--data",
                str(images), "--out", str(out), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "holds files that are not a LoRA Studio run (notes.txt)" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert "Traceback" not in err
