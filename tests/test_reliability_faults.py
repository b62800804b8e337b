"""Issue 8, faults: SIGKILL mid-write, a full disk, no network, outputs inside the run folder.

Kills are real SIGKILLs: either of a child process stopped at an exact point of a write (the
write is cut in half first), or of a training job at random moments.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthetic import make_shapes_dataset
from test_training import tiny_config
from trainer import checkpoint as ckpt
from trainer.cli import main as cli
from trainer.events import Failed, Saved, read_events
from trainer.jobs import Job, JobSpec
from trainer.loop import train
from trainer.lora_reader import read_lora_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rel-faults") / "img"
    make_shapes_dataset(folder, 6)
    return folder


def loads_everywhere(run: Path) -> list[Path]:
    """Every complete checkpoint of `run` loads; returns them."""
    found = ckpt.list_checkpoints(run)
    for folder in found:
        loaded = ckpt.load_checkpoint(folder)
        assert loaded.position.step == int(folder.name.removeprefix("step-"))
        assert loaded.lora and "optimizer" in loaded.training_state
    return found


# ---------------------------------------------------------------- SIGKILL at an exact point

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    import safetensors.torch as st
    from trainer import checkpoint as ckpt
    from trainer import export

    where, target, point = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    lora = {"lora_unet_x.lora_down.weight": torch.randn(4, 32),
            "lora_unet_x.lora_up.weight": torch.randn(32, 4),
            "lora_unet_x.alpha": torch.tensor(4.0)}

    def die_after_half(write):
        def dying(obj, path, *args, **kwargs):
            write(obj, path, *args, **kwargs)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return dying

    def save(step):
        pos = ckpt.TrainingPosition(step=step, epoch=0, batch_in_epoch=step, total_steps=9)
        ckpt.save_checkpoint(target, pos, lora, {"optimizer": {"s": torch.ones(2) * step}},
                             "schema_version = 1\\n", keep_last=5, metadata={"a": "b"})

    if where == "checkpoint":
        save(1)
        if point == "lora":
            st.save_file = die_after_half(st.save_file)
        elif point == "state":
            torch.save = die_after_half(torch.save)
        elif point == "rename":
            os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        save(2)
    else:
        export.write_lora_file(target, lora, {"ss_output_name": "first"}, "fp16")
        lora = {k: v * 2 for k, v in lora.items()}
        if point == "write":
            export.save_file = die_after_half(export.save_file)
        elif point == "rename":
            os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        export.write_lora_file(target, lora, {"ss_output_name": "second"}, "fp16")
    print("not killed")
""")


def run_child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("point", ["lora", "state", "rename"])
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path,
                                                                  point: str) -> None:
    run = tmp_path / "run"
    result = run_child("checkpoint", str(run), point)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert [p.name for p in loads_everywhere(run)] == ["step-000001"]
    assert ckpt.resolve_checkpoint(run).name == "step-000001"  # what --resume picks
    # the next save clears what the killed one left behind
    pos = ckpt.TrainingPosition(step=3, epoch=0, batch_in_epoch=3, total_steps=9)
    ckpt.save_checkpoint(run, pos, {"w": torch.zeros(2)}, {"optimizer": {}}, "", keep_last=5)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001",
                                                                        "step-000003"]


@pytest.mark.parametrize("point", ["write", "rename"])
def test_sigkill_during_export_keeps_the_earlier_file(tmp_path: Path, point: str) -> None:
    out = tmp_path / "out" / "style.safetensors"
    result = run_child("export", str(out), point)
    assert result.returncode == -signal.SIGKILL, result.stderr
    lora = read_lora_file(out)
    assert lora.metadata["ss_output_name"] == "first"  # the earlier file, whole
    assert set(load_file(out)) == {"lora_unet_x.lora_down.weight", "lora_unet_x.lora_up.weight",
                                   "lora_unet_x.alpha"}
    from trainer.export import write_lora_file

    write_lora_file(out, {"w": torch.zeros(2)}, {}, "fp32")
    assert [p.name for p in out.parent.iterdir()] == ["style.safetensors"]  # temp files gone


# ---------------------------------------------------------------- SIGKILL of a real job


@pytest.mark.slow  # ~75 s on 2 shared cores: three job starts and a reference run
def test_sigkill_of_a_job_at_random_moments_then_resume(tiny_model, shapes, tmp_path: Path,
                                                        capsys) -> None:
    steps = 60  # far more than three short attempts can reach, on a fast or a slow machine
    sections = {"schedule": {"max_train_steps": steps},
                "output": {"save_every_n_steps": 1, "keep_last": 1000}}
    reference = tmp_path / "reference"
    expected = load_file(train(tiny_config(tiny_model[0], shapes, reference, **sections),
                               reference))

    run = tmp_path / "run"
    config = tiny_config(tiny_model[0], shapes, run, **sections)
    rng = random.Random(8)
    kills = []
    for attempt in range(3):
        resume = run if ckpt.list_checkpoints(run) else None
        job = Job(JobSpec.from_config(config, run, resume))
        job.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not job.done:  # first save of this attempt
            if any(isinstance(e, Saved) for e in job.poll(0.05)):
                break
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(job.pid, signal.SIGKILL)
        events = []
        while not job.done or not events:
            events += job.poll(0.1)
            if any(isinstance(e, Failed) for e in events):
                break
        kills.append(max((int(p.name[5:]) for p in ckpt.list_checkpoints(run)), default=0))
        found = loads_everywhere(run)  # every checkpoint left on disk loads
        assert found, "a kill after the first save must leave a checkpoint"
    print(f"\nkilled after checkpoints {kills} of {steps}")
    assert kills[-1] < steps, "the job finished before it was killed; kill sooner"
    read_events(run)  # a cut last line is skipped, not fatal

    code = cli(["train", "--resume", str(run)])
    assert code == 0, capsys.readouterr().err
    result = load_file(run / "tiny_lora.safetensors")
    assert result.keys() == expected.keys()
    assert all(torch.equal(result[k], expected[k]) for k in expected), \
        "resumed after kills must end bit-identical to the uninterrupted run"


# ---------------------------------------------------------------- disk full


class DiskFiller:
    """Makes the Nth file write of checkpoints and exports fail with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
        import safetensors.torch as st

        import trainer.export as export

        self.count, self.fail_at = 0, fail_at
        for owner, name in ((st, "save_file"), (export, "save_file"), (torch, "save")):
            monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name)))

    def wrap(self, write):
        def guarded(*args, **kwargs):
            self.count += 1
            if self.count == self.fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(*args, **kwargs)
        return guarded


def test_disk_full_during_a_checkpoint_keeps_the_earlier_ones(tiny_model, shapes, tmp_path: Path,
                                                              monkeypatch) -> None:
    run = tmp_path / "run"
    config = tiny_config(tiny_model[0], shapes, run, schedule={"max_train_steps": 3},
                         output={"save_every_n_steps": 1, "keep_last": 10})
    with monkeypatch.context() as patch:
        DiskFiller(patch, fail_at=4)  # 2 writes per checkpoint: the 2nd checkpoint's state file
        with pytest.raises(OSError) as error:
            train(config, run)
    assert error.value.errno == errno.ENOSPC
    failed = read_events(run)[-1]
    assert failed.type == "failed"
    assert "disk is full" in failed.message and "step-000002" in failed.message
    assert "earlier checkpoints are kept" in failed.message
    assert [p.name for p in loads_everywhere(run)] == ["step-000001"]
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")] == []
    assert not (run / "tiny_lora.safetensors").exists()
    # space freed: the run resumes from step 2 and finishes
    lora = train(config, run, resume=run)
    assert [p.name for p in loads_everywhere(run)] == ["step-000001", "step-000002", "step-000003"]
    assert read_lora_file(lora).modules


def test_disk_full_during_export_keeps_the_earlier_lora(tiny_model, shapes, tmp_path: Path,
                                                        monkeypatch) -> None:
    out = tmp_path / "out"
    first = train(tiny_config(tiny_model[0], shapes, out, schedule={"max_train_steps": 2}),
                  tmp_path / "first")
    before = first.read_bytes()
    run = tmp_path / "second"
    config = tiny_config(tiny_model[0], shapes, out, schedule={"max_train_steps": 3})
    with monkeypatch.context() as patch:
        DiskFiller(patch, fail_at=3)  # the final checkpoint writes 2 files, then the export
        with pytest.raises(OSError):
            train(config, run)
    failed = read_events(run)[-1]
    assert "disk is full" in failed.message and "tiny_lora.safetensors" in failed.message
    assert "earlier file there is kept" in failed.message
    assert first.read_bytes() == before and read_lora_file(first).modules
    assert sorted(p.name for p in out.iterdir()) == ["tiny_lora.safetensors"]  # no temp file
    assert [p.name for p in loads_everywhere(run)] == ["step-000003"]


# ---------------------------------------------------------------- network and output paths


def test_the_socket_guard_really_blocks() -> None:
    from conftest import NetworkBlocked

    with pytest.raises(NetworkBlocked):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(NetworkBlocked):
            sock.connect(("127.0.0.1", 9))
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        with pytest.raises(NetworkBlocked):
            sock.connect(("::1", 9))


def test_a_full_tiny_run_opens_no_connection_and_writes_only_in_its_folder(
        tiny_model, shapes, tmp_path: Path, monkeypatch) -> None:
    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda *a, **k: lookups.append(a) or (_ for _ in ()).throw(OSError(a)))
    before = {p for p in tmp_path.rglob("*")}
    run = tmp_path / "run"
    config = tiny_config(tiny_model[0], shapes, run, schedule={"max_train_steps": 3},
                         output={"save_every_n_steps": 1, "verify": True},
                         sampling={"every_n_steps": 2, "prompts": ["a red circle --n blue"]})
    lora = train(config, run)
    assert lookups == []  # no DNS lookup either (connect attempts would have raised)
    assert lora.parent == run
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == run or run in p.parents for p in created)
    assert (run / "verify.txt").exists() and any((run / "samples").iterdir())


# ---------------------------------------------------------------- the GUI killed mid-run

GUI_STAND_IN = textwrap.dedent("""
    import os, signal, sys, json
    from trainer.events import Saved
    from trainer.jobs import Job, JobSpec

    spec = JobSpec(**json.loads(sys.argv[1]))
    job = Job(spec)
    job.start()
    print(job.pid, flush=True)
    while not job.done:
        if any(isinstance(e, Saved) for e in job.poll(0.1)):
            os.kill(os.getpid(), signal.SIGKILL)  # the window dies; the trainer child lives on
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours is as good as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_the_gui_killed_mid_run_leaves_a_valid_run_folder(tiny_model, shapes, tmp_path: Path) -> None:
    import dataclasses
    import json

    from trainer.runs import summarize_run

    run = tmp_path / "run"
    config = tiny_config(tiny_model[0], shapes, run, schedule={"max_train_steps": 4},
                         output={"save_every_n_steps": 1})
    spec = JobSpec.from_config(config, run)
    gui = subprocess.run([sys.executable, "-c", GUI_STAND_IN, json.dumps(dataclasses.asdict(spec))],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert gui.returncode == -signal.SIGKILL, gui.stderr
    child = int(gui.stdout.split()[0])
    deadline = time.monotonic() + 120
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphan_hung = _alive(child)
    if orphan_hung:
        os.kill(child, signal.SIGKILL)
    assert loads_everywhere(run)  # whatever happened, the checkpoints load
    summary = summarize_run(run)   # and reopening the folder shows the run
    assert summary.steps_done >= 1 and summary.checkpoints
    # the orphaned child notices its window is gone, stops and saves (or had just finished)
    assert summary.state in ("finished", "stopped early")
    if summary.state == "finished":
        assert read_lora_file(run / "tiny_lora.safetensors").modules
    assert not orphan_hung, "the trainer child outlived its window by 2 minutes"


def test_the_trainer_process_guard_blocks_internet_sockets_but_not_local_ones() -> None:
    """What the trainer child installs first thing (trainer/worker.py), in a fresh process."""
    script = (
        "import socket\n"
        "from trainer.offline import NetworkForbidden, forbid_network\n"
        "forbid_network()\n"
        "for call in (lambda: socket.create_connection(('203.0.113.5', 443), timeout=1),\n"
        "             lambda: socket.socket(socket.AF_INET6).connect(('::1', 9))):\n"
        "    try:\n"
        "        call()\n"
        "    except NetworkForbidden as error:\n"
        "        print('blocked:', error)\n"
        "a, b = socket.socketpair()\n"
        "a.sendall(b'ok')\n"
        "print('local:', b.recv(2).decode())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parent.parent)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[0] == ("blocked: the trainer does not use the network; blocked a connection "
                        "to ('203.0.113.5', 443)")
    assert lines[1].startswith("blocked:") and "'::1'" in lines[1]
    assert lines[2] == "local: ok"
