"""The exported file in someone else's loader: diffusers' `load_lora_weights` must reproduce the
trained U-Net (outputs compared, not just "no exception": a wrongly named file loads nothing)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from synthetic import make_shapes_dataset
from test_training import tiny_config
from trainer.loop import train
from trainer.models import load_base_model
from trainer.network import apply_lora


def unet_output(unet: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), context).sample


def test_diffusers_reproduces_the_trained_unet(tiny_model, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "data"
    make_shapes_dataset(folder, 4)
    config = tiny_config(tiny_model[0], folder, tmp_path / "run",
                         schedule={"max_train_steps": 25},
                         network={"rank": 4, "alpha": 2.0},  # alpha != rank: the scale matters
                         optimizer={"learning_rate": 5e-3}, output={"save_precision": "fp32"})
    lora_file = train(config, tmp_path / "run")

    trained = load_base_model(tiny_model[0])
    network = apply_lora(trained.unet, None, config.network)
    network.load_state_dict(load_file(lora_file))
    expected = unet_output(trained.unet)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model[0], safety_checker=None,
                                                   feature_extractor=None,
                                                   requires_safety_checker=False)
    before = unet_output(pipe.unet)
    pipe.load_lora_weights(str(lora_file))
    after = unet_output(pipe.unet)

    assert (after - expected).abs().max().item() < 1e-4
    assert (after - before).abs().max().item() > 100 * 1e-4
