"""Several processes, one job (trainer.distributed, trainer.job_ranks): gloo on this CPU.

The contract pinned here: N processes at batch b train what one process at batch N*b trains;
rank 0 alone writes; Stop, Pause and a dead rank end the job cleanly; resume with the same N is
bit-identical and with another N is refused. The jobs start real processes, so they are slow.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain import make_pretrained_tiny_model
from synthetic import make_shapes_dataset
from test_cli_signals import start_training, wait_for_step
from test_jobs import _wait_for
from test_training import tiny_config
from trainer.checkpoint import load_checkpoint
from trainer.config import LossConfig
from trainer.distributed import Ranks, ranks_from_env
from trainer.events import Failed, Finished, Loss, Progress, Saved, Started, read_events
from trainer.job_ranks import place
from trainer.jobs import Job, JobSpec
from trainer.objective import diffusion_loss
from trainer.resume import processes_problem


# --- the parts, in this process ------------------------------------------------------------

def test_a_global_batch_is_split_in_rank_order_and_a_short_one_leaves_later_ranks_less() -> None:
    assert [Ranks(r, 3).rows(6, 2) for r in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 6)]
    # a bucket's last batch of 3 samples over 3 ranks at batch 2: 2, 1 and no rows
    assert [Ranks(r, 3).rows(3, 2) for r in range(3)] == [slice(0, 2), slice(2, 3), slice(3, 3)]
    with pytest.raises(ValueError, match="rank 2 of world 2"):
        Ranks(2, 2)


def test_the_place_is_read_from_torchruns_variables() -> None:
    env = place(1, 4, 29500)
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "29500"
    assert ranks_from_env(env) == Ranks(rank=1, world=4, local_rank=1)
    assert ranks_from_env({}) == Ranks()  # no torchrun: one process
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        ranks_from_env({"RANK": "0", "WORLD_SIZE": "two"})


class _Echo(torch.nn.Module):
    """A "U-Net" whose prediction is its input times a weight: the loss depends on the noise."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, sample, timesteps, context, **kwargs):
        return type("Out", (), {"sample": sample * self.weight})()


def test_the_ranks_losses_and_gradients_add_up_to_the_global_batchs() -> None:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    context = torch.zeros(4, 77, 8)
    loss_config = LossConfig(noise_offset=0.1, min_snr_gamma=5.0)

    def loss_of(rows: slice | None) -> tuple[float, float]:
        unet = _Echo()
        part = latents if rows is None else latents[rows]
        loss = diffusion_loss(unet, part, context[: part.shape[0]], scheduler,
                              torch.Generator().manual_seed(7), loss_config, "epsilon",
                              rows=rows, global_count=4 if rows is not None else None)
        loss.backward()
        return loss.item(), unet.weight.grad.item()

    whole = loss_of(None)
    parts = [loss_of(slice(0, 3)), loss_of(slice(3, 4))]  # uneven, as a short batch splits
    assert sum(p[0] for p in parts) == pytest.approx(whole[0], rel=1e-6)
    assert sum(p[1] for p in parts) == pytest.approx(whole[1], rel=1e-6)
    assert parts[0][0] != pytest.approx(parts[1][0])  # each rank trained different rows


def test_a_checkpoint_resumes_only_with_its_number_of_processes() -> None:
    assert processes_problem(2, 2) is None
    assert "--processes 2" in processes_problem(2, 1)
    assert "trained by 1 process and would continue with 4" in processes_problem(1, 4)


# --- real jobs of two processes ---------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) denoiser: on a random U-Net most gradients are at AdamW's eps, where float
    rounding in the order of a sum decides the step, so no two summation orders agree."""
    folder = tmp_path_factory.mktemp("pretrained") / "tiny"
    make_pretrained_tiny_model(folder, steps=200)
    return folder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ranks") / "img"
    make_shapes_dataset(folder, 6)
    return folder


def job_spec(model: Path, data: Path, run: Path, *, processes: int, batch: int, steps: int,
             resume: Path | None = None, **sections) -> JobSpec:
    config = tiny_config(model, data, run, schedule={"max_train_steps": steps},
                         dataset={"batch_size": batch}, precision={"processes": processes,
                                                                   "threads": 1}, **sections)
    return JobSpec.from_config(config, run, resume)


def run_job(spec: JobSpec) -> list:
    job = Job(spec)
    job.start()
    events = list(job.events())
    job.wait()
    return events


def _lora(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step:06d}" / "lora.safetensors")


@pytest.mark.slow
def test_two_processes_at_batch_1_train_what_one_trains_at_batch_2(pretrained, tmp_path: Path):
    """Five images: each epoch ends with a global batch of one, where rank 1 has no rows."""
    shapes = tmp_path / "five"
    make_shapes_dataset(shapes, 5)
    one = run_job(job_spec(pretrained, shapes, tmp_path / "one", processes=1, batch=2, steps=20))
    two = run_job(job_spec(pretrained, shapes, tmp_path / "two", processes=2, batch=1, steps=20))
    assert isinstance(one[-1], Finished) and isinstance(two[-1], Finished), (one[-1], two[-1])
    a, b = _lora(tmp_path / "one", 20), _lora(tmp_path / "two", 20)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert max(a[k].abs().max().item() for k in a if "lora_up" in k) > 1e-3  # up: from 0
    # the stream looks like one process's: the same steps, global totals, one Started
    assert [(e.step, round(e.loss, 5)) for e in one if isinstance(e, Loss)] == \
           [(e.step, round(e.loss, 5)) for e in two if isinstance(e, Loss)]
    assert [e.total for e in two if isinstance(e, Progress)] == [20] * 20
    assert sum(isinstance(e, Started) for e in two) == 1
    assert [(e.kind, e.step) for e in two if isinstance(e, Saved)] == [("checkpoint", 20),
                                                                      ("lora", 20)]
    # rank 0 alone wrote: the log holds each step once, the file says the global batch
    assert [e.step for e in read_events(tmp_path / "two") if e.type == "loss"] == list(range(1, 21))
    meta = json.loads((tmp_path / "two" / "checkpoints" / "step-000020" / "metadata.json")
                      .read_text())
    assert (meta["ss_batch_size_per_device"], meta["ss_total_batch_size"]) == ("1", "2")
    assert load_checkpoint(tmp_path / "two").position.processes == 2


@pytest.mark.slow
def test_resume_with_two_processes_is_bit_identical_and_one_process_is_refused(
        pretrained, shapes, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    run_job(job_spec(pretrained, shapes, straight, processes=2, batch=1, steps=8,
                     output={"save_every_n_steps": 4, "keep_last": 5}))
    resumed = run_job(job_spec(pretrained, shapes, tmp_path / "resumed", processes=2, batch=1,
                               steps=8, resume=straight / "checkpoints" / "step-000004"))
    assert isinstance(resumed[-1], Finished), resumed[-1]
    a, b = _lora(straight, 8), _lora(tmp_path / "resumed", 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    refused = run_job(job_spec(pretrained, shapes, tmp_path / "single", processes=1, batch=1,
                               steps=8, resume=straight / "checkpoints" / "step-000004"))
    assert isinstance(refused[-1], Failed) and refused[-1].kind == "checkpoint"
    assert "trained by 2 processes" in refused[-1].message
    assert "--processes 2" in refused[-1].message


@pytest.mark.slow
def test_pause_and_stop_reach_every_rank(tiny_model, shapes, tmp_path: Path) -> None:
    job = Job(job_spec(tiny_model[0], shapes, tmp_path / "run", processes=2, batch=1,
                       steps=10_000))
    job.start()
    _wait_for(job, lambda e: isinstance(e, Progress) and e.step >= 2)
    job.send("pause")
    paused_at = _wait_for(job, lambda e: getattr(e, "text", "").startswith("paused"))
    time.sleep(1.5)  # paused: the other rank waits with rank 0, well past a poll or two
    during = job.poll(0.1)
    assert not [e for e in during if isinstance(e, Progress)], during
    job.send("resume")
    step = _wait_for(job, lambda e: isinstance(e, Progress))[-1].step
    job.send("stop")
    rest = list(job.events())
    job.wait()
    assert paused_at and isinstance(rest[-1], Finished), rest[-3:]
    stopped = load_checkpoint(tmp_path / "run").position.step
    assert stopped >= step and stopped < 10_000
    assert all(p.exitcode == 0 for p in job._helpers.processes)  # the other rank left cleanly


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_naming_it_and_the_last_checkpoint_loads(
        tiny_model, shapes, tmp_path: Path) -> None:
    job = Job(job_spec(tiny_model[0], shapes, tmp_path / "run", processes=2, batch=1,
                       steps=10_000, output={"save_every_n_steps": 2}))
    job.start()
    _wait_for(job, lambda e: isinstance(e, Saved) and e.step >= 4)
    job._helpers.processes[0].kill()
    killed_at = time.monotonic()
    rest = list(job.events())
    job.wait()
    assert time.monotonic() - killed_at < 30  # gloo notices at once; nothing waits on it
    failed = rest[-1]
    assert isinstance(failed, Failed) and failed.kind == "crashed", failed
    assert "training process 2 of 2 (rank 1) was killed by signal SIGKILL" in failed.message
    assert "resume" in failed.hint
    last = load_checkpoint(tmp_path / "run")
    assert last.position.step >= 4 and last.position.processes == 2
    assert last.lora and all(torch.isfinite(t).all() for t in last.lora.values())
    on_disk = read_events(tmp_path / "run")[-1]
    assert on_disk.type == "failed" and "rank 1" in on_disk.message


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_of_the_command_line_and_it_exits_0(tiny_model, shapes,
                                                                     tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = start_training(tiny_model, shapes, run, "--processes", "2",
                             "--set", "precision.threads=1")
    wait_for_step(run, 3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"--resume {run}" in out and (run / "my_lora.safetensors").exists()
    stopped = load_checkpoint(run)
    assert stopped.position.processes == 2 and 3 <= stopped.position.step < 5000


@pytest.mark.slow
def test_torchrun_runs_the_same_job_as_processes_2(tiny_model, shapes, tmp_path: Path) -> None:
    """Several machines are this code under `torchrun --nnodes`; one machine pins it."""
    ours = run_job(job_spec(tiny_model[0], shapes, tmp_path / "ours", processes=2, batch=1,
                            steps=6))
    assert isinstance(ours[-1], Finished), ours[-1]
    process = start_training(tiny_model, shapes, tmp_path / "torchrun", "--set",
                             "precision.threads=1", steps=6,
                             launcher=("--standalone", "--nproc-per-node", "2"))
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.count("LoRA written to") == 1  # rank 0 alone reports
    a, b = _lora(tmp_path / "ours", 6), _lora(tmp_path / "torchrun", 6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(tmp_path / "torchrun").position.processes == 2
