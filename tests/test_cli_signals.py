"""Ctrl+C, SIGTERM and SIGHUP in `lora-train train`: once = stop, save, exit 0; twice = abort,
last checkpoint kept; the trainer child never outlives the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthetic import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sig") / "img"
    make_shapes_dataset(folder, 4)
    return folder


def start_training(tiny_model, shapes: Path, run: Path, *extra: str, steps: int = 5000,
                   launcher: tuple[str, ...] = ()) -> subprocess.Popen:
    """`lora-train train` in its own process; `launcher`: torchrun's arguments, to run it under
    `python -m torch.distributed.run` instead."""
    python = [sys.executable, "-m", "torch.distributed.run", *launcher] if launcher else [
        sys.executable]
    command = [*python, "-m", "trainer.cli", "train", "--preset", "tiny-cpu", "--model",
               str(tiny_model[0]), "--data", str(shapes), "--out", str(run), "--steps", str(steps),
               "--set", "output.save_every_n_steps=5", "--set", "output.verify=false", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def wait_for_step(run: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = run / "events.jsonl"
        if log.exists() and any(json.loads(line).get("type") == "loss" and
                                json.loads(line)["step"] >= step
                                for line in log.read_text().splitlines() if line.endswith("}")):
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s")


def test_one_ctrl_c_stops_saves_and_exits_0(tiny_model, shapes, tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = start_training(tiny_model, shapes, run)
    wait_for_step(run, 3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"LoRA written to {run / 'my_lora.safetensors'}" in out
    assert f"--resume {run}" in out
    assert (run / "my_lora.safetensors").exists()
    assert list((run / "checkpoints").glob("step-*/state.json"))


def test_two_ctrl_c_abort_and_keep_the_last_checkpoint(tiny_model, shapes, tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = start_training(tiny_model, shapes, run)
    wait_for_step(run, 7)  # a checkpoint at step 5 exists by now
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)  # two presses, not one coalesced signal
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "aborted" in err and f"--resume {run}" in err
    from trainer.checkpoint import load_checkpoint
    assert load_checkpoint(run).position.step >= 5  # loads: not half-written


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_and_save_like_ctrl_c(tiny_model, shapes, tmp_path: Path,
                                                       signum: int) -> None:
    """What `kill`, `timeout`, systemd and batch schedulers send killed the CLI and left the
    trainer child training unattended (#15)."""
    run = tmp_path / "run"
    process = start_training(tiny_model, shapes, run)
    wait_for_step(run, 3)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"LoRA written to {run / 'my_lora.safetensors'}" in out
    assert (run / "my_lora.safetensors").exists()
    assert not _children_of(process.pid)


def _children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: no psutil needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_the_trainer_child_never_outlives_its_parent(tiny_model, shapes, tmp_path: Path) -> None:
    """The CLI killed outright (SIGKILL: no handler runs): its child stops and saves at the
    next step instead of training on unattended for thousands of steps."""
    run = tmp_path / "run"
    process = start_training(tiny_model, shapes, run)
    wait_for_step(run, 3)
    trainer = _children_of(process.pid)  # the trainer (and multiprocessing's helper)
    assert trainer, "no trainer child found"
    process.kill()
    process.communicate(timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in trainer):
        time.sleep(0.2)
    alive = [pid for pid in trainer if Path(f"/proc/{pid}").exists()]
    assert not alive, f"trainer child {alive} still running after its parent died"
    from trainer.checkpoint import load_checkpoint
    assert load_checkpoint(run).position.step >= 3  # it saved on the way out
