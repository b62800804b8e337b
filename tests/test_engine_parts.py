"""Engine parts one at a time on the tiny model: objective, optimizers, caches, guards, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthetic import make_shapes_dataset
from test_training import losses, tiny_config
from trainer.cli import main as cli
from trainer.config import LossConfig
from trainer.loop import train
from trainer.objective import diffusion_loss


class ConstantUNet(torch.nn.Module):
    """Predicts a fixed tensor: lets the objective's arithmetic be pinned by hand."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, noisy, timesteps, context):
        return type("Out", (), {"sample": torch.full_like(noisy, self.value)})()


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000)


def test_epsilon_loss_is_the_mse_to_the_drawn_noise(scheduler) -> None:
    latents = torch.zeros(2, 4, 8, 8)
    loss = diffusion_loss(ConstantUNet(0.0), latents, torch.zeros(2, 77, 8), scheduler,
                          torch.Generator().manual_seed(0), LossConfig(), "epsilon")
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-6)


def test_v_prediction_and_min_snr_weighting(scheduler) -> None:
    latents = torch.ones(1, 4, 8, 8)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn((1, 4, 8, 8), generator=generator)
    t = torch.randint(0, 1000, (1,), generator=generator)
    a = scheduler.alphas_cumprod[t].sqrt().item()
    s = (1 - scheduler.alphas_cumprod[t]).sqrt().item()
    v = a * noise - s * latents
    plain = diffusion_loss(ConstantUNet(0.0), latents, torch.zeros(1, 77, 8), scheduler,
                           torch.Generator().manual_seed(1), LossConfig(), "v_prediction")
    assert plain.item() == pytest.approx(v.pow(2).mean().item(), rel=1e-5)
    snr = a * a / (s * s)
    weighted = diffusion_loss(ConstantUNet(0.0), latents, torch.zeros(1, 77, 8), scheduler,
                              torch.Generator().manual_seed(1), LossConfig(min_snr_gamma=1.0),
                              "v_prediction")
    assert weighted.item() == pytest.approx(plain.item() * min(snr, 1.0) / (snr + 1), rel=1e-5)


def test_noise_offset_shifts_the_target_per_channel(scheduler) -> None:
    base = diffusion_loss(ConstantUNet(0.0), torch.zeros(1, 4, 8, 8), torch.zeros(1, 77, 8),
                          scheduler, torch.Generator().manual_seed(2), LossConfig(), "epsilon")
    offset = diffusion_loss(ConstantUNet(0.0), torch.zeros(1, 4, 8, 8), torch.zeros(1, 77, 8),
                            scheduler, torch.Generator().manual_seed(2),
                            LossConfig(noise_offset=0.5), "epsilon")
    assert offset.item() != pytest.approx(base.item(), rel=1e-3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shapes") / "img"
    make_shapes_dataset(folder, 6)
    return folder


@pytest.mark.parametrize("optimizer", ["Lion", "Prodigy"])
def test_other_optimizers_train(tiny_model, shapes, tmp_path: Path, optimizer: str) -> None:
    lr = 1.0 if optimizer == "Prodigy" else 1e-4
    config = tiny_config(tiny_model[0], shapes, tmp_path, schedule={"max_train_steps": 3},
                         optimizer={"type": optimizer, "learning_rate": lr})
    from safetensors.torch import load_file
    tensors = load_file(train(config, tmp_path))
    ups = [v for k, v in tensors.items() if "lora_up" in k]
    assert any(v.abs().max() > 0 for v in ups)  # the zero-initialised up weights moved


def test_adamw8bit_on_cpu_says_what_to_use(tiny_model, shapes, tmp_path: Path, capsys) -> None:
    code = cli(["train", "--preset", "tiny-cpu", "--model", str(tiny_model[0]), "--data",
                str(shapes), "--out", str(tmp_path), "--set", "optimizer.type=AdamW8bit"])
    assert code == 2
    assert "AdamW8bit' needs an NVIDIA GPU" in capsys.readouterr().err


def test_gradient_accumulation_uses_two_batches_per_step(tiny_model, shapes, tmp_path: Path) -> None:
    config = tiny_config(tiny_model[0], shapes, tmp_path, schedule={
        "max_train_steps": 3, "gradient_accumulation_steps": 2})
    train(config, tmp_path)
    state = json.loads(next((tmp_path / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["step"] == 3 and state["epoch"] * 6 + state["batch_in_epoch"] == 6


def test_gradient_checkpointing_gives_the_same_losses(tiny_model, shapes, tmp_path: Path) -> None:
    for name, flag in (("plain", False), ("ckpt", True)):
        config = tiny_config(tiny_model[0], shapes, tmp_path / name,
                             schedule={"max_train_steps": 3},
                             precision={"gradient_checkpointing": flag})
        train(config, tmp_path / name)
    plain, checkpointed = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert [round(l, 5) for _, l, _ in plain] == [round(l, 5) for _, l, _ in checkpointed]


def test_non_finite_loss_stops_naming_step_and_files(tiny_model, shapes, tmp_path: Path,
                                                     monkeypatch) -> None:
    import trainer.loop as loop

    real = loop.diffusion_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 4 else value

    monkeypatch.setattr(loop, "diffusion_loss", poisoned)
    config = tiny_config(tiny_model[0], shapes, tmp_path, schedule={"max_train_steps": 6},
                         output={"save_every_n_steps": 2})
    with pytest.raises(loop.NonFiniteLoss) as error:
        train(config, tmp_path)
    assert error.value.step == 4 and error.value.files[0].endswith(".png")
    events = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "failed" and events[-1]["kind"] == "nan"
    assert "step 4" in events[-1]["message"] and error.value.files[0] in events[-1]["message"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    assert not (tmp_path / "tiny_lora.safetensors").exists()


def test_out_of_memory_becomes_advice() -> None:
    from trainer.failures import classify

    failed = classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert failed.kind == "out_of_memory"
    assert "batch size" in failed.hint and "gradient checkpointing" in failed.hint
    cpu = classify(RuntimeError("[enforce fail at alloc_cpu.cpp:116] . DefaultCPUAllocator: "
                                "can't allocate memory: you tried to allocate 9663676416 bytes"))
    assert cpu.kind == "out_of_memory"  # the CPU's allocator never says "out of memory"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_lora_trains_in_fp32_on_a_half_precision_base(tiny_model, dtype) -> None:
    """GradScaler refuses fp16 gradients and bf16 rounds small updates away: the adapters
    must not take the base's dtype (peft's injection gives them that)."""
    from trainer.config import NetworkConfig
    from trainer.models import load_base_model
    from trainer.network import apply_lora_to

    base = load_base_model(tiny_model[0], dtype=dtype)
    network = apply_lora_to(base, NetworkConfig(rank=4, alpha=4.0, train_text_encoder=True))
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    assert next(base.unet.parameters()).dtype == dtype  # the frozen base stays half
    assert network.parameters("text_encoder")  # the text encoder's adapters too


def test_latent_disk_cache_hits_and_an_edited_image_misses(tiny_model, tmp_path: Path) -> None:
    from trainer.caching import LatentCache
    from trainer.models import load_base_model

    folder = tmp_path / "img"
    paths = make_shapes_dataset(folder, 2)
    vae = load_base_model(tiny_model[0]).vae
    first = LatentCache(vae, background="#ffffff", disk_dir=tmp_path / "cache")
    first.fill([(p, (64, 64), False) for p in paths])
    second = LatentCache(vae, background="#ffffff", disk_dir=tmp_path / "cache")
    latent = second.get(paths[0], (64, 64), False)
    assert (second.hits, second.misses) == (1, 0)
    assert torch.equal(latent, first.get(paths[0], (64, 64), False))
    from PIL import Image
    edit = Image.new("RGB", (64, 64), (255, 255, 255))
    edit.paste((0, 0, 0), (0, 0, 24, 64))  # the artist edits the image (not mirror-symmetric)
    edit.save(paths[0])
    third = LatentCache(vae, background="#ffffff", disk_dir=tmp_path / "cache")
    edited = third.get(paths[0], (64, 64), False)
    assert third.misses == 1 and not torch.equal(edited, latent)
    assert not torch.equal(third.get(paths[0], (64, 64), True), edited)  # flip is its own entry


def test_dry_run_lists_modules_and_parameters(tiny_model, shapes, capsys) -> None:
    code = cli(["train", "--preset", "tiny-cpu", "--model", str(tiny_model[0]), "--data",
                str(shapes), "--dry-run", "--set", 'network.blocks=["mid"]',
                "--set", 'network.attention=["attn2"]'])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[:-1] == [f"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_{p}"
                        for p in ("to_q", "to_k", "to_v", "to_out_0")]
    # mid width 64, context 64, rank 4: q/out 64->64, k/v 64->64: 4 x (4*64 + 64*4)
    assert out[-1].startswith("4 modules, 2,048 trainable parameters")


def test_config_show_prints_the_effective_config(capsys) -> None:
    assert cli(["config", "show", "--preset", "tiny-cpu", "--steps", "7", "--name", "x",
                "--set", "network.rank=2"]) == 0
    import tomllib
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["schedule"]["max_train_steps"] == 7 and shown["network"]["rank"] == 2
    assert shown["dataset"]["resolution"] == 64 and shown["output"]["name"] == "x"


def test_kohya_dataset_toml_on_the_command_line(tiny_model, shapes, tmp_path: Path,
                                                capsys) -> None:
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[general]\nresolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n'
                    f'[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\n'
                    f'image_dir = "{shapes}"\nnum_repeats = 3\n')
    assert cli(["validate", "--preset", "tiny-cpu", "--dataset-config", str(toml)]) == 0
    report = capsys.readouterr().out
    assert "6 images" in report and "18" in report and "9" in report  # 6 x 3 repeats / batch 2


def test_an_image_broken_after_the_scan_is_skipped_not_fatal(tiny_model, tmp_path: Path,
                                                             monkeypatch) -> None:
    import trainer.loop as loop

    folder = tmp_path / "img"
    paths = make_shapes_dataset(folder, 3)
    real_scan = loop.scan_dataset

    def scan_then_break(config):
        report = real_scan(config)
        paths[1].write_bytes(b"")  # the file changes between the scan and the caching
        return report

    monkeypatch.setattr(loop, "scan_dataset", scan_then_break)
    config = tiny_config(tiny_model[0], folder, tmp_path / "run", schedule={"max_train_steps": 2})
    assert train(config, tmp_path / "run").exists()
    events = [json.loads(l) for l in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    warnings = [e["text"] for e in events if e["type"] == "log" and e["level"] == "warning"]
    assert any("img01.png" in w and "could not be read" in w for w in warnings)
    assert events[-1]["type"] == "finished"


def test_init_from_flag_continues_from_an_existing_lora(tiny_model, shapes, tmp_path: Path,
                                                        capsys) -> None:
    from safetensors.torch import load_file

    first = tiny_config(tiny_model[0], shapes, tmp_path / "a", schedule={"max_train_steps": 3},
                        output={"save_precision": "fp32"})
    earlier = load_file(train(first, tmp_path / "a"))
    second = tiny_config(tiny_model[0], shapes, tmp_path / "b", schedule={"max_train_steps": 1},
                         optimizer={"learning_rate": 1e-12}, output={"save_precision": "fp32"},
                         network={"init_from": str(tmp_path / "a" / "tiny_lora.safetensors")})
    continued = load_file(train(second, tmp_path / "b"))
    key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"
    assert earlier[key].abs().max() > 0
    assert torch.allclose(continued[key], earlier[key], atol=1e-6)  # started where `a` ended
    assert cli(["config", "show", "--init-from", str(tmp_path / "a" / "tiny_lora.safetensors")]) == 0
    assert f'init_from = "{tmp_path / "a" / "tiny_lora.safetensors"}"' in capsys.readouterr().out


def test_epoch_checkpoints_land_on_step_boundaries(tiny_model, shapes, tmp_path: Path) -> None:
    # 6 images, batch 2 -> 3 batches per epoch; accumulation 2 -> epochs end mid-step.
    config = tiny_config(tiny_model[0], shapes, tmp_path, dataset={"batch_size": 2},
                         schedule={"max_train_steps": 6, "gradient_accumulation_steps": 2},
                         output={"save_every_n_epochs": 1, "keep_last": 10})
    train(config, tmp_path)
    states = [json.loads(p.read_text()) for p in sorted((tmp_path / "checkpoints").glob(
        "step-*/state.json"))]
    # batches consumed at each save: 4 (epoch 1 ended at 3), 6 (epoch 2 ended), 10, 12 (end)
    assert [(s["step"], s["epoch"] * 3 + s["batch_in_epoch"]) for s in states] == [
        (2, 4), (3, 6), (5, 10), (6, 12)]


def test_resume_alone_continues_with_the_runs_own_config(tiny_model, shapes, tmp_path: Path,
                                                         capsys) -> None:
    from trainer.loop import TrainControl

    run = tmp_path / "run"
    control = TrainControl()
    control.on_step = lambda step: control.stop.set() if step == 2 else None
    train(tiny_config(tiny_model[0], shapes, run, schedule={"max_train_steps": 4}), run,
          control=control)
    assert cli(["train", "--resume", str(run / "checkpoints" / "step-000002")]) == 0
    assert f"LoRA written to {run / 'tiny_lora.safetensors'}" in capsys.readouterr().out
    assert [s for s, _, _ in losses(run)] == [1, 2, 3, 4]


@pytest.mark.parametrize("with_config", [False, True])
def test_resume_writes_where_the_run_folder_is_now(tiny_model, shapes, tmp_path: Path, capsys,
                                                  with_config: bool) -> None:
    """A moved run folder resumed wrote into its old location (its stored output.dir won) (#15);
    with --config too (the config's own output.dir), the run still continues in its folder."""
    import shutil

    from trainer.loop import TrainControl

    old = tmp_path / "old" / "run"
    control = TrainControl()
    control.on_step = lambda step: control.stop.set() if step == 2 else None
    config = tiny_config(tiny_model[0], shapes, old, schedule={"max_train_steps": 4})
    train(config, old, control=control)
    moved = tmp_path / "moved" / "run"
    moved.parent.mkdir()
    shutil.move(old, moved)
    args = ["train", "--resume", str(moved)]
    if with_config:
        args += ["--config", str(moved / "config.toml")]
    assert cli(args) == 0
    assert f"LoRA written to {moved / 'tiny_lora.safetensors'}" in capsys.readouterr().out
    assert not old.exists() and (moved / "tiny_lora.safetensors").exists()
    assert [s for s, _, _ in losses(moved)] == [1, 2, 3, 4]


def test_resume_on_another_base_model_is_refused(tiny_model, shapes, tmp_path: Path) -> None:
    """--resume with another base model trained the rest of the run on it without a word (#15):
    the weights are part of what a resume checks; the model's path may change (a moved file,
    the folder vs its single file) without tripping it."""
    from trainer.checkpoint import CheckpointError
    from trainer.loop import TrainControl
    from trainer.models import make_tiny_model

    run = tmp_path / "run"
    control = TrainControl()
    control.on_step = lambda step: control.stop.set() if step == 2 else None
    train(tiny_config(tiny_model[0], shapes, run, schedule={"max_train_steps": 4}), run,
          control=control)
    other = tmp_path / "other"
    make_tiny_model(other, seed=1)  # the same architecture, other weights
    with pytest.raises(CheckpointError, match="base model's weights are not the ones"):
        train(tiny_config(other, shapes, run, schedule={"max_train_steps": 4}), run,
              resume=run)
    # the same weights from the single file: a different path, the same model
    train(tiny_config(tiny_model[1], shapes, run, schedule={"max_train_steps": 4}), run,
          resume=run)
    assert [s for s, _, _ in losses(run)][-2:] == [3, 4]


def test_a_full_disk_is_its_own_kind_of_failure() -> None:
    import errno

    from trainer.failures import classify

    failed = classify(OSError(errno.ENOSPC, "No space left on device"))
    assert failed.kind == "disk_full" and "free some disk space" in failed.hint


def test_a_missing_cover_image_fails_the_run_at_its_start(tiny_model, shapes, tmp_path: Path) -> None:
    """The cover is read by the export after the last step: a missing one failed the run
    after hours of training (#15). Now before the first step."""
    from trainer.export import ExportError

    run = tmp_path / "run"
    config = tiny_config(tiny_model[0], shapes, run, schedule={"max_train_steps": 4},
                         metadata={"cover_image": str(tmp_path / "gone.png")})
    with pytest.raises(ExportError, match="cover image .*gone.png does not exist"):
        train(config, run)
    assert losses(run) == []  # not one step was trained


def test_an_enormous_cover_image_is_refused_as_a_decompression_bomb(tmp_path: Path,
                                                                   monkeypatch) -> None:
    from PIL import Image

    from trainer.export import ExportError, cover_thumbnail

    cover = tmp_path / "cover.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(cover)
    assert cover_thumbnail(cover).startswith("data:image/jpeg;base64,")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is "enormous" now
    with pytest.raises(ExportError, match="too large to open safely"):
        cover_thumbnail(cover)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_bad_input_not_a_bug(tiny_model, shapes, tmp_path: Path,
                                                          capsys) -> None:
    code = cli(["train", "--preset", "tiny-cpu", "--model", str(tiny_model[0]), "--data",
                str(shapes), "--out", str(tmp_path / "run"), "--steps", "2",
                "--set", "precision.device=cuda"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "precision.device = 'cuda' but no CUDA GPU is visible" in err
    assert "bug" not in err and "Traceback" not in err
