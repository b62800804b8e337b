"""Every family end to end on its tiny model: train from the single file and from the folder,
export, and a fresh diffusers pipeline of that family loading the file reproduces what was
trained; exact resume; the v-prediction target; SDXL's size ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthetic import make_shapes_dataset
from test_training import losses, tiny_config, train_whole_and_resumed
from trainer.checkpoint import list_checkpoints
from trainer.families import FAMILIES, get_family
from trainer.loop import train
from trainer.models import load_base_model, make_tiny_model

PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
             "sdxl": "StableDiffusionXLPipeline"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(folder, 6)
    return folder


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"model-{request.param}")
    make_tiny_model(root / "m", single_file=root / "m.safetensors", family=request.param, seed=3)
    return request.param, root / "m", root / "m.safetensors"


def _unet_inputs(unet):
    generator = torch.Generator().manual_seed(5)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled, generator=generator),
                                       "time_ids": torch.tensor([[64.0, 48.0, 0.0, 8.0, 64.0, 64.0]])}}
    return sample, context, extra


@torch.no_grad()
def _outputs(unet, encoders: dict, tokenizers: dict) -> dict[str, torch.Tensor]:
    sample, context, extra = _unet_inputs(unet)
    out = {"unet": unet(sample, torch.tensor([400]), context, **extra).sample}
    for component, encoder in encoders.items():
        ids = tokenizers[component](["a red circle, white background"], padding="max_length",
                                    max_length=77, return_tensors="pt").input_ids
        out[component] = encoder(ids, output_hidden_states=True).hidden_states[-1]
    return out


def test_train_export_and_diffusers_reproduces_it(model, data, tmp_path) -> None:
    import diffusers

    from trainer.network import apply_lora_to

    family, folder, single = model
    settings = dict(schedule={"max_train_steps": 30, "seed": 2}, optimizer={"learning_rate": 5e-3},
                    network={"train_text_encoder": True}, output={"save_precision": "fp32"})
    first = {}
    for name, path in (("folder", folder), ("file", single)):
        run = tmp_path / name
        exported = train(tiny_config(path, data, run, **settings), run)
        first[name] = losses(run)
    assert first["folder"][0] == first["file"][0]  # same loss at step 1 from either form
    assert len(first["file"]) == 30

    # what the trainer trained: the base with the checkpoint's adapters, through peft
    ours = load_base_model(folder)
    network = apply_lora_to(ours, tiny_config(folder, data, tmp_path, **settings).network)
    network.load_state_dict(load_file(list_checkpoints(tmp_path / "file")[-1] / "lora.safetensors"))
    trained = _outputs(ours.unet, ours.text_encoders, ours.tokenizers)

    # a fresh pipeline of the family, diffusers' own loader, the exported file
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(
        folder, **({"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
                   if family != "sdxl" else {}))
    spec = get_family(family)
    encoders = {s.component: getattr(pipe, s.component) for s in spec.text_encoders}
    tokenizers = {s.component: getattr(pipe, s.tokenizer_component) for s in spec.text_encoders}
    base = _outputs(pipe.unet, encoders, tokenizers)
    pipe.load_lora_weights(str(exported))
    loaded = _outputs(pipe.unet, encoders, tokenizers)
    assert set(loaded) == {"unet", *(s.component for s in spec.text_encoders)}
    for part in loaded:
        assert float((loaded[part] - trained[part]).abs().max()) < 1e-4, part
        assert float((loaded[part] - base[part]).abs().max()) > 1e-2, part


def test_resume_is_bit_identical(model, data, tmp_path) -> None:
    family, folder, _ = model
    if family == "sd1":
        pytest.skip("SD 1.x: tests/test_training.py::test_stop_and_resume_is_bit_identical")
    settings = dict(schedule={"max_train_steps": 20, "lr_scheduler": "cosine", "lr_warmup_steps": 3,
                              "seed": 11},
                    network={"dropout": 0.1, "train_text_encoder": True},
                    dataset={"batch_size": 2, "flip_aug": True, "shuffle_caption": True},
                    output={"save_precision": "fp32"})
    whole, resumed = train_whole_and_resumed(folder, data, tmp_path, 10, **settings)
    a, b = load_file(whole), load_file(resumed)
    assert a.keys() == b.keys() and len(a) > 100
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "part")[10:] == losses(tmp_path / "whole")[10:]


def test_v_prediction_target_is_v() -> None:
    """The loss compares the U-Net's output with v = sqrt(abar) * noise - sqrt(1 - abar) * x0,
    pinned on a 1-element input against the formula, not the scheduler."""
    from diffusers.schedulers import DDPMScheduler

    from trainer.config import LossConfig
    from trainer.objective import diffusion_loss

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction")
    latents = torch.full((1, 1, 1, 1), 0.5)

    class Zero(torch.nn.Module):
        def forward(self, sample, timesteps, context):
            return type("Out", (), {"sample": torch.zeros_like(sample)})()

    for kind in ("v_prediction", "epsilon"):
        generator = torch.Generator().manual_seed(0)
        loss = diffusion_loss(Zero(), latents, torch.zeros(1, 77, 4), scheduler, generator,
                              LossConfig(), kind)
        replay = torch.Generator().manual_seed(0)
        noise = torch.randn((1, 1, 1, 1), generator=replay)
        t = int(torch.randint(0, 1000, (1,), generator=replay))
        abar = float(scheduler.alphas_cumprod[t])
        target = abar ** 0.5 * float(noise) - (1 - abar) ** 0.5 * 0.5 if kind == "v_prediction" \
            else float(noise)
        assert float(loss) == pytest.approx(target ** 2, rel=1e-5), kind


def test_zero_terminal_snr_rescales_the_schedule(data, tmp_path, monkeypatch) -> None:
    """The run trains on the rescaled schedule (its last step pure noise), and min-SNR weighting
    at that SNR of 0 gives epsilon models weight 1, not 0/0."""
    from diffusers.schedulers import DDPMScheduler

    import trainer.objective as objective
    from trainer.config import LossConfig

    make_tiny_model(tmp_path / "v", family="sd2", prediction_type="v_prediction")
    config = tiny_config(tmp_path / "v", data, tmp_path / "run", schedule={"max_train_steps": 2},
                         loss={"zero_terminal_snr": True, "min_snr_gamma": 5.0})
    seen = []
    real = objective.diffusion_loss

    def spy(unet, latents, context, scheduler, *args, **kwargs):
        seen.append(float(scheduler.alphas_cumprod[-1]))
        return real(unet, latents, context, scheduler, *args, **kwargs)

    monkeypatch.setattr("trainer.loop.diffusion_loss", spy)
    train(config, tmp_path / "run")
    assert seen == [0.0, 0.0]  # the plain SD schedule ends at alphas_cumprod 0.0047

    scheduler = DDPMScheduler(num_train_timesteps=4, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)

    class Zero(torch.nn.Module):
        def forward(self, sample, timesteps, context):
            return type("Out", (), {"sample": torch.zeros_like(sample)})()

    latents = torch.full((1, 1, 1, 1), 0.5)
    generator = torch.Generator().manual_seed(0)  # draws timestep 3: SNR 0
    weighted = diffusion_loss_at(real, Zero(), latents, scheduler, generator, LossConfig(min_snr_gamma=5.0))
    plain = diffusion_loss_at(real, Zero(), latents, scheduler, torch.Generator().manual_seed(0),
                              LossConfig())
    assert weighted == plain and weighted == weighted  # weight 1, finite


def diffusion_loss_at(loss_fn, unet, latents, scheduler, generator, loss) -> float:
    return float(loss_fn(unet, latents, torch.zeros(1, 77, 4), scheduler, generator, loss, "epsilon"))


def test_sdxl_size_ids_follow_bucket_crop_and_flip(tmp_path) -> None:
    """(original h, w, crop top, left, target h, w) for a 96x64 image in a 64x64 bucket: resized to
    96x64, centre crop at left 16; flipped, the left is measured from the other side (16 again:
    symmetric), and for an off-centre crop of 101x64 -> left 18, flipped 101 - 18 - 64 = 19."""
    from PIL import Image

    from trainer.caching import LatentCache

    make_tiny_model(tmp_path / "xl", family="sdxl")
    vae = load_base_model(tmp_path / "xl").vae
    Image.new("RGB", (96, 64), (200, 10, 10)).save(tmp_path / "wide.png")
    Image.new("RGB", (101, 64), (200, 10, 10)).save(tmp_path / "odd.png")
    cache = LatentCache(vae, background="#ffffff", disk_dir=tmp_path / "cache")
    assert cache.size_ids(tmp_path / "wide.png", (64, 64), False).tolist() == [64, 96, 0, 16, 64, 64]
    assert cache.size_ids(tmp_path / "odd.png", (64, 64), False).tolist() == [64, 101, 0, 18, 64, 64]
    assert cache.size_ids(tmp_path / "odd.png", (64, 64), True).tolist() == [64, 101, 0, 19, 64, 64]
    again = LatentCache(vae, background="#ffffff", disk_dir=tmp_path / "cache")  # read from disk
    assert again.size_ids(tmp_path / "odd.png", (64, 64), True).tolist() == [64, 101, 0, 19, 64, 64]
    assert again.hits == 1 and again.misses == 0


def test_bucket_steps_of_32_are_for_sdxl_only(data, tmp_path) -> None:
    from trainer.config_io import ConfigError

    make_tiny_model(tmp_path / "sd1")
    config = tiny_config(tmp_path / "sd1", data, tmp_path / "run", dataset={"bucket_reso_steps": 32})
    with pytest.raises(ConfigError, match=r"bucket_reso_steps = 32 is for SDXL models; sd1 is SD 1\.x: "
                                          r"use 64"):
        train(config, tmp_path / "run")


def test_a_checkpoint_from_before_a_new_setting_resumes() -> None:
    """A run saved before `loss.zero_terminal_snr` / `network.text_encoder_2_lr` existed has no
    such keys; they count as their defaults, so the resume is not refused over them."""
    from trainer.checkpoint import TrainingPosition, flatten, resume_differences
    from trainer.config import TrainConfig

    now = flatten(TrainConfig().model_dump(mode="json"))
    old = {k: v for k, v in now.items() if k not in ("loss.zero_terminal_snr",
                                                      "network.text_encoder_2_lr")}
    position = lambda config: TrainingPosition(step=1, epoch=0, batch_in_epoch=1,  # noqa: E731
                                               total_steps=2, dataset=[], config=config)
    assert resume_differences(position(old), position(now)) == []
    changed = dict(now, **{"loss.zero_terminal_snr": True})
    assert resume_differences(position(old), position(changed)) == [
        "loss.zero_terminal_snr was False, now True"]
