"""The single-GPU CUDA path of the training loop, for real: fp16 with a GradScaler, bf16, xformers
or its SDPA fallback, AdamW 8-bit, gradient checkpointing, exact resume, the NaN guard and the
out-of-memory report.

Marked `gpu`: collected everywhere, skipped without a CUDA GPU. Every run is an in-process
`trainer.loop.train` call (a few steps, 64 px, batch 1, the tiny random SD 1.x model), so a test
can replace one step (`trainer.loop.diffusion_loss`, the name the loop calls) or look at the model
it trained.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from synthetic import make_shapes_dataset
from test_training import losses, tiny_config
import trainer.loop
from trainer.checkpoint import load_checkpoint
from trainer.events import read_events
from trainer.failures import HINTS
from trainer.loop import NonFiniteLoss, train
from trainer.optim import OptimizerError

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs an NVIDIA GPU (CUDA)")]

if torch.cuda.is_available():
    # Deterministic cuBLAS needs a fixed workspace, and torch reads this variable once, at the
    # process's first cuBLAS call: so it is set at import, before any test touches the GPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

HAS_XFORMERS = importlib.util.find_spec("xformers") is not None
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cuda") / "img"
    make_shapes_dataset(folder, 4)
    return folder


def cuda_config(tiny_model, data: Path, run: Path, steps: int = 3, **sections):
    """The tiny-cpu preset moved to the GPU (it says device = "cpu"), `steps` steps long."""
    sections["precision"] = {"device": "cuda", **sections.get("precision", {})}
    sections["schedule"] = {"max_train_steps": steps, **sections.get("schedule", {})}
    return tiny_config(tiny_model[0], data, run, **sections)


def trained(run: Path, steps: int):
    """Asserts the run took `steps` finite steps, finished, and its adapters learned (lora_up
    starts at zero); returns its last checkpoint."""
    assert [(s, math.isfinite(loss)) for s, loss, _ in losses(run)] == \
           [(s, True) for s in range(1, steps + 1)]
    assert read_events(run)[-1].type == "finished", read_events(run)[-1]
    last = load_checkpoint(run)  # training_state.pt read back with weights_only=True
    assert max(t.abs().max().item() for k, t in last.lora.items() if "lora_up" in k) > 1e-4
    return last


def replace_step(monkeypatch, change) -> None:
    """Calls `change(n, loss)` on the n-th batch's loss (1-based) and trains on what it returns."""
    real, calls = trainer.loop.diffusion_loss, []

    def step(*args, **kwargs):
        calls.append(None)
        return change(len(calls), real(*args, **kwargs))

    monkeypatch.setattr(trainer.loop, "diffusion_loss", step)


def spy_on_bases(monkeypatch) -> list:
    """The base models train() builds, to look at their U-Nets after the run."""
    real, bases = trainer.loop.apply_lora_to, []

    def spy(base, network):
        bases.append(base)
        return real(base, network)

    monkeypatch.setattr(trainer.loop, "apply_lora_to", spy)
    return bases


@pytest.fixture
def deterministic():
    """Deterministic kernels (cuDNN convolutions, SDPA backward): the same steps, the same bits."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.benchmark = before[2]


def test_fp16_trains_and_the_checkpoint_keeps_the_grad_scaler(tiny_model, dataset,
                                                             tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(cuda_config(tiny_model, dataset, run, precision={"mixed_precision": "fp16"}), run)
    state = trained(run, 3).training_state
    assert 0 < state["grad_scaler"]["scale"] <= 2.0 ** 16  # torch's initial scale, or backed off
    assert "cuda_rng" in state


def test_bf16_trains_without_a_grad_scaler(tiny_model, dataset, tmp_path: Path) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    run = tmp_path / "run"
    train(cuda_config(tiny_model, dataset, run, precision={"mixed_precision": "bf16"}), run)
    assert "grad_scaler" not in trained(run, 3).training_state  # bf16 has fp32's range


def test_xformers_is_used_when_installed_and_sdpa_stands_in_otherwise(
        tiny_model, dataset, tmp_path: Path, monkeypatch) -> None:
    bases, run = spy_on_bases(monkeypatch), tmp_path / "run"
    train(cuda_config(tiny_model, dataset, run, precision={"attention": "xformers"}), run)
    trained(run, 3)
    fallback = [e.text for e in read_events(run) if e.type == "log" and "using SDPA" in e.text]
    processors = {type(p).__name__ for p in bases[0].unet.attn_processors.values()}
    if HAS_XFORMERS:
        assert (fallback, processors) == ([], {"XFormersAttnProcessor"})
    else:
        assert fallback == ["xformers needs CUDA and the xformers package; using SDPA"]
        assert processors == {"AttnProcessor2_0"}  # diffusers' SDPA processor


def test_adamw_8bit_trains_and_its_state_is_in_the_checkpoint(tiny_model, dataset,
                                                            tmp_path: Path) -> None:
    if not HAS_BITSANDBYTES:  # (in the body: without a GPU, the module's reason is the one shown)
        pytest.skip("bitsandbytes is not installed (the test below runs)")
    run = tmp_path / "run"
    train(cuda_config(tiny_model, dataset, run, optimizer={"type": "AdamW8bit"}), run)
    moments = trained(run, 3).training_state["optimizer"]["state"].values()
    assert moments and all("state1" in m for m in moments)  # bitsandbytes' name; AdamW: exp_avg


def test_adamw_8bit_without_bitsandbytes_says_how_to_install_it(tiny_model, dataset,
                                                              tmp_path: Path) -> None:
    if HAS_BITSANDBYTES:
        pytest.skip("bitsandbytes is installed (the test above runs)")
    run = tmp_path / "run"
    with pytest.raises(OptimizerError):
        train(cuda_config(tiny_model, dataset, run, optimizer={"type": "AdamW8bit"}), run)
    failed = read_events(run)[-1]
    assert (failed.type, failed.kind) == ("failed", "config")
    assert "needs the bitsandbytes package: pip install bitsandbytes" in failed.message
    assert not (run / "checkpoints").exists()


def test_gradient_checkpointing_gives_the_same_losses(tiny_model, dataset, tmp_path: Path,
                                                      monkeypatch, deterministic) -> None:
    bases = spy_on_bases(monkeypatch)
    for name, on in (("plain", False), ("checkpointed", True)):
        train(cuda_config(tiny_model, dataset, tmp_path / name,
                          precision={"gradient_checkpointing": on}), tmp_path / name)
        trained(tmp_path / name, 3)
    assert [base.unet.is_gradient_checkpointing for base in bases] == [False, True]
    # Step 1 is the same forward pass; steps 2 and 3 follow the recomputed backward's gradients.
    plain, checkpointed = losses(tmp_path / "plain"), losses(tmp_path / "checkpointed")
    assert [c[1] for c in checkpointed] == pytest.approx([p[1] for p in plain], rel=1e-3)


def test_resume_on_cuda_continues_exactly(tiny_model, dataset, tmp_path: Path,
                                          deterministic) -> None:
    # dropout draws from the CUDA generator, cosine + warmup from the schedule's state
    settings = dict(network={"dropout": 0.1},
                    schedule={"lr_scheduler": "cosine", "lr_warmup_steps": 2})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cuda_config(tiny_model, dataset, straight, 8, output={"save_every_n_steps": 4},
                      **settings), straight)
    train(cuda_config(tiny_model, dataset, resumed, 8, **settings), resumed,
          resume=straight / "checkpoints" / "step-000004")
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert (a.position.step, b.position.step) == (8, 8) and a.lora.keys() == b.lora.keys()
    # Deterministic kernels make this bit-identical in practice. The bound allows cuBLAS/cuDNN
    # to pick another kernel for the second run (other free memory), nothing more: a lost CUDA
    # RNG state, optimizer moment or schedule step moves a tensor by ~lr = 1e-3.
    assert max((a.lora[k] - b.lora[k]).abs().max().item() for k in a.lora) <= 1e-6
    after, before = losses(resumed), losses(straight)[4:]  # steps 5-8
    assert [(s, lr) for s, _, lr in after] == [(s, lr) for s, _, lr in before]
    assert [v for _, v, _ in after] == pytest.approx([v for _, v, _ in before], rel=1e-6)
    assert torch.equal(a.training_state["cuda_rng"], b.training_state["cuda_rng"])


@pytest.mark.parametrize("mixed_precision", ["fp16", "no"])
def test_a_non_finite_loss_fails_the_run_at_its_step_and_keeps_the_checkpoint(
        tiny_model, dataset, tmp_path: Path, monkeypatch, mixed_precision: str) -> None:
    # The loop checks the *loss* before backward: a non-finite one raises NonFiniteLoss, even
    # under fp16 (the GradScaler never sees it; it only skips steps whose *gradients* overflow).
    replace_step(monkeypatch, lambda n, loss: loss * math.inf if n == 3 else loss)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss):
        train(cuda_config(tiny_model, dataset, run, 6, output={"save_every_n_steps": 2},
                          precision={"mixed_precision": mixed_precision}), run)
    failed = read_events(run)[-1]
    assert (failed.type, failed.kind, failed.hint) == ("failed", "nan", HINTS["nan"])
    assert failed.message.startswith("the loss became inf at step 3 (batch: img")
    assert [s for s, _, _ in losses(run)] == [1, 2]
    kept = load_checkpoint(run)
    assert kept.position.step == 2 and all(torch.isfinite(t).all() for t in kept.lora.values())
    assert not (run / "tiny_lora.safetensors").exists()


def test_fp16_gradients_that_overflow_skip_the_step_and_halve_the_scale(
        tiny_model, dataset, tmp_path: Path, monkeypatch) -> None:
    # x 1e30 stays finite in the fp32 loss, but its gradient overflows fp16 on the way back
    replace_step(monkeypatch, lambda n, loss: loss * 1e30 if n == 2 else loss)
    run = tmp_path / "run"
    train(cuda_config(tiny_model, dataset, run, precision={"mixed_precision": "fp16"}), run)
    assert trained(run, 3).training_state["grad_scaler"]["scale"] == 2.0 ** 15  # 2**16 backed off


def test_out_of_memory_fails_with_advice_and_leaves_no_half_written_file(
        tiny_model, dataset, tmp_path: Path, monkeypatch) -> None:
    def greedy(n, loss):
        if n == 3:
            torch.empty(2 ** 45, dtype=torch.uint8, device="cuda")  # 32 TiB: more than any GPU
        return loss

    replace_step(monkeypatch, greedy)
    run = tmp_path / "run"
    with pytest.raises(torch.OutOfMemoryError):
        train(cuda_config(tiny_model, dataset, run, 6, output={"save_every_n_steps": 2}), run)
    failed = read_events(run)[-1]
    assert (failed.type, failed.kind) == ("failed", "out_of_memory")
    assert "out of memory" in failed.message.lower()
    assert "batch size" in failed.hint and "gradient checkpointing" in failed.hint
    # every file whole: no temp file or folder, no lock, each log line parses, the checkpoint loads
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".lock")]
    assert all(json.loads(line) for line in (run / "events.jsonl").read_text().splitlines())
    assert load_checkpoint(run).position.step == 2
    assert not (run / "tiny_lora.safetensors").exists()
